"""docker-compose.yml is checked against the code it starts (Docker cannot run here): every command names
a real entry point and subcommand, every EHRI_* variable is a setting, every dependency a service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from app.cli.main import cli
from app.settings import Settings

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
SERVICES: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]


def _command(service: dict[str, Any]) -> list[str]:
    return [str(part) for part in service.get("command", [])]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_an_image_and_depends_on_services_that_exist(name: str) -> None:
    service = SERVICES[name]
    assert "image" in service or "build" in service
    assert set(service.get("depends_on", {})) <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_ehri_variable_is_a_setting(name: str) -> None:
    fields = {f"EHRI_{field.upper()}" for field in Settings.model_fields}
    variables = {key for key in SERVICES[name].get("environment", {}) if key.startswith("EHRI_")}
    assert variables <= fields, variables - fields


@pytest.mark.parametrize("name", [n for n in sorted(SERVICES) if _command(SERVICES[n])[:1] == ["ehr-ingest"]])
def test_every_ehr_ingest_command_exists(name: str) -> None:
    argv = _command(SERVICES[name])[1:]
    words = argv[: next((i for i, w in enumerate(argv) if w.startswith("-")), len(argv))]
    result = CliRunner().invoke(cli, [*words, "--help"])
    assert result.exit_code == 0, f"{name}: ehr-ingest {' '.join(words)}: {result.output}"


@pytest.mark.parametrize("name", [n for n in sorted(SERVICES) if _command(SERVICES[n])[:1] == ["celery"]])
def test_every_celery_process_runs_our_app_on_queues_it_declares(name: str) -> None:
    argv = _command(SERVICES[name])
    assert argv[1:3] == ["-A", "workers.celery_app"]
    assert argv[3] in {"worker", "beat"}
    settings = Settings()
    if "-Q" in argv:
        assert set(argv[argv.index("-Q") + 1].split(",")) <= _declared(settings)
    if argv[3] == "worker" and "healthcheck" in SERVICES[name]:
        node = argv[argv.index("-n") + 1].split("@")[0] if "-n" in argv else "celery"
        assert f"-d {node}@$$HOSTNAME" in " ".join(SERVICES[name]["healthcheck"]["test"])


def _declared(settings: Settings) -> set[str]:
    return {settings.queue, settings.periodic_queue, settings.reconcile_queue, settings.alerts_queue}


def _consumed() -> set[str]:
    """The queues some worker service consumes (a worker without -Q consumes every declared queue)."""
    consumed: set[str] = set()
    for service in SERVICES.values():
        argv = _command(service)
        if argv[:1] == ["celery"] and argv[3] == "worker":
            consumed |= set(argv[argv.index("-Q") + 1].split(",")) if "-Q" in argv else _declared(Settings())
    return consumed


def test_every_queue_has_a_worker_and_reconcile_runs_have_one_of_their_own() -> None:
    settings = Settings()
    assert _consumed() == _declared(settings)
    for name, service in SERVICES.items():
        argv = _command(service)
        if argv[:1] == ["celery"] and argv[3] == "worker":
            queues = set(argv[argv.index("-Q") + 1].split(",")) if "-Q" in argv else _declared(settings)
            # A backfill, or a slow alert sink, never takes the prefork slot a drain is waiting for.
            assert not (settings.queue in queues and settings.reconcile_queue in queues), name
            assert not (settings.queue in queues and settings.alerts_queue in queues), name


def test_the_worker_publishes_the_metrics_port_it_serves() -> None:
    worker = SERVICES["worker"]
    port = worker["environment"]["EHRI_WORKER_METRICS_PORT"]
    assert f"{port}:{port}" in worker["ports"]
