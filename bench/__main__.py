"""``python -m bench``: run every benchmark module in turn (or those named on the command line).

A benchmark that fails prints its traceback and the others still run; the exit status says one failed.
"""

from __future__ import annotations

import importlib
import sys
import traceback

BENCHMARKS = [
    "bench.pipeline",
    "bench.ehrsim_bench",
    "bench.webhook",
    "bench.backfill",
    "bench.mllp",
    "bench.soak",
]


def main(argv: list[str]) -> int:
    selected = [f"bench.{name}" for name in argv] or BENCHMARKS
    failed: list[str] = []
    for module_name in selected:
        print(f"== {module_name}", flush=True)
        try:
            importlib.import_module(module_name).main()
        except (Exception, SystemExit):  # noqa: BLE001 - one failing benchmark must not hide the others
            traceback.print_exc()
            failed.append(module_name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
