"""Choosing prometheus_client's multiprocess mode for a worker node, and clearing what a run left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from workers.metrics import clear_stale_files

ROOT = Path(__file__).resolve().parents[2]
_PROBE = (
    "import os, workers, app.metrics, prometheus_client.values as v\n"
    "d = os.environ.get('PROMETHEUS_MULTIPROC_DIR')\n"
    "print(d, v.ValueClass.__name__, sorted(os.listdir(d)) if d else [])\n"
)


def _probe(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EHRI_WORKER_METRICS", "PROMETHEUS"))}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, env={**clean, **env}, capture_output=True, check=True
    )
    return out.stdout.decode().split(maxsplit=2)


def test_a_node_serving_metrics_records_into_a_private_directory_removed_at_exit() -> None:
    directory, value_class, files = _probe(EHRI_WORKER_METRICS_PORT="9999")

    assert value_class == "MmapedValue"  # multiprocess mode, chosen before app.metrics was imported
    assert "counter_" in files
    assert not Path(directory).exists()


def test_a_node_without_a_metrics_port_keeps_the_single_process_store() -> None:
    directory, value_class, _ = _probe()

    assert (directory, value_class) == ("None", "MutexValue")


def test_stale_files_of_earlier_processes_are_cleared_and_our_own_kept(tmp_path: Path) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"")
    (tmp_path / "histogram_2.db").write_bytes(b"")
    (tmp_path / f"counter_{os.getpid()}.db").write_bytes(b"")

    assert clear_stale_files(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == [f"counter_{os.getpid()}.db"]
