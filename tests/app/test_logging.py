"""The one logging setup: stdlib and structlog lines through one renderer, library URL loggers held at
WARNING, query strings redacted everywhere (tracebacks included)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest
import structlog

from app.ehr import token_events
from app.logging import QUIET_LOGGERS, configure_logging, redact_urls
from app.settings import Settings

MRN = "M0424242"
SEARCH_URL = f"https://ehr.test/fhir/Patient?identifier=urn%3Aoid%3A1.2.3%7C{MRN}&_count=1"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)
    structlog.configure(**config)


def _json_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def _configure(log_format: Literal["json", "console"] = "json", level: str = "DEBUG") -> None:
    configure_logging(Settings(log_format=log_format, log_level=level))


def _search_transport(status: int) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, json={"resourceType": "Bundle"}))


def test_stdlib_and_structlog_lines_are_one_json_object_each_with_their_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _configure(level="INFO")

    structlog.get_logger("ingest.drain").warning("ingest.something", facility_id="f1")
    structlog.get_logger("ingest.drain").info("ingest.else", facility_id="f1")
    logging.getLogger("celery.worker").warning("worker %s lost", "w1")
    logging.getLogger("celery.worker").debug("not at INFO")

    lines = _json_lines(capsys.readouterr().err)
    assert [(r["event"], r["level"], r["logger"]) for r in lines] == [
        ("ingest.something", "warning", "ingest.drain"),
        ("ingest.else", "info", "ingest.drain"),
        ("worker w1 lost", "warning", "celery.worker"),
    ]
    assert all("timestamp" in r for r in lines)


def test_token_lines_follow_the_configured_format(capsys: pytest.CaptureFixture[str]) -> None:
    """The token logger is created at import, before any process configures logging."""
    _configure()

    token_events.log_only("f1", token_events.ISSUED, expires_in=300)

    (line,) = _json_lines(capsys.readouterr().err)
    assert (line["event"], line["level"], line["stream"], line["facility_id"]) == (
        "ehr.token.issued",
        "info",
        "token",
        "f1",
    )


def test_httpx_does_not_log_request_urls_even_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    _configure(level="DEBUG")

    with httpx.Client(transport=_search_transport(200)) as client:
        client.get(SEARCH_URL)
    logging.getLogger("httpx").warning("kept: %s", "warnings still get through")

    err = capsys.readouterr().err
    assert MRN not in err
    assert [r["event"] for r in _json_lines(err)] == ["kept: warnings still get through"]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_traceback_carrying_a_search_url_is_logged_without_its_query(
    capsys: pytest.CaptureFixture[str], log_format: Literal["json", "console"]
) -> None:
    _configure(log_format)

    with httpx.Client(transport=_search_transport(404)) as client:
        try:
            client.get(SEARCH_URL).raise_for_status()
        except httpx.HTTPStatusError:
            structlog.get_logger("ingest.fetch").exception("ingest.fetch_failed")
            logging.getLogger("celery.app.trace").error("Task failed", exc_info=True)

    err = capsys.readouterr().err
    assert MRN not in err
    assert "identifier=" not in err
    assert err.count("HTTPStatusError") >= 2  # both tracebacks are there, minus the query
    assert err.count("https://ehr.test/fhir/Patient?[redacted]") >= 2


def test_a_request_line_with_a_query_is_redacted_whoever_logs_it(capsys: pytest.CaptureFixture[str]) -> None:
    _configure(level="INFO")

    logging.getLogger("uvicorn.error").warning('"GET /hooks/f1?mrn=%s HTTP/1.1" 400', MRN)

    (line,) = _json_lines(capsys.readouterr().err)
    assert line["event"] == '"GET /hooks/f1?[redacted] HTTP/1.1" 400'


def test_configuring_again_replaces_the_handler_rather_than_adding_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _configure("console")
    _configure("json")

    structlog.get_logger("x").warning("once")

    assert [r["event"] for r in _json_lines(capsys.readouterr().err)] == ["once"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SEARCH_URL, "https://ehr.test/fhir/Patient?[redacted]"),
        (f"url '{SEARCH_URL}'", "url 'https://ehr.test/fhir/Patient?[redacted]'"),
        ("GET /fhir/Patient?identifier=x HTTP/1.1", "GET /fhir/Patient?[redacted] HTTP/1.1"),
        ("https://ehr.test/fhir/Patient#frag", "https://ehr.test/fhir/Patient?[redacted]"),
        ("https://ehr.test/fhir/Patient/p1", "https://ehr.test/fhir/Patient/p1"),
        ("why? because", "why? because"),
        ("ingest.row_failed", "ingest.row_failed"),
    ],
)
def test_redact_urls(text: str, expected: str) -> None:
    assert redact_urls(text) == expected
