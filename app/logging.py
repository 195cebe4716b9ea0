"""One logging setup for every process (receiver, celery worker parent and pool children, beat, CLI).

structlog and the standard library share one handler on stderr and one renderer: with
``EHRI_LOG_FORMAT=json`` every line is one JSON object (``event``, ``level``, ``logger``, ``timestamp``,
``process``), whether it was logged by our code or by uvicorn, Celery, httpx or a Python warning; with
``console``, a readable key-value line. The level is ``EHRI_LOG_LEVEL`` in every process.

No patient data (DESIGN.md rule 6). Our code logs ids, reasons and counts. Libraries that print request
URLs (httpx, httpcore, urllib3, uvicorn's access log), SQL parameters (SQLAlchemy's echo) or task
arguments (Celery's pool) are held at WARNING whatever the level, because an identifier-only focus puts
an MRN in a search URL; and on every line, exceptions and tracebacks included, a URL's query string and
fragment are replaced by ``?[redacted]``.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO

import structlog
from structlog.stdlib import ProcessorFormatter
from structlog.typing import EventDict, Processor, WrappedLogger

from app.settings import Settings

# Loggers that print request URLs (with query values), SQL parameters or task arguments below WARNING.
QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "hpack", "uvicorn.access", "sqlalchemy", "celery.pool")
# Libraries that install handlers of their own: their lines go through ours instead.
_OWN_HANDLERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.redirected")

# A URL or an absolute path followed by a query string or a fragment: keep the path, drop the rest.
_QUERY = re.compile(r"((?:\b[a-zA-Z][a-zA-Z0-9+.-]*://|/)[^\s?#'\"<>]*)[?#][^\s'\"<>]+")
REDACTED = "[redacted]"


def redact_urls(text: str) -> str:
    """Each URL's query and fragment replaced: ``/Patient?identifier=…`` → ``/Patient?[redacted]``."""
    if "?" not in text and "#" not in text:
        return text
    return _QUERY.sub(lambda m: f"{m.group(1)}?{REDACTED}", text)


def _redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact_urls(value)
    return event_dict


def _add_process(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Which process of a Celery worker logged the line (``MainProcess``, ``ForkPoolWorker-2``...)."""
    record = event_dict.get("_record")
    if record is not None:
        event_dict["process"] = record.processName
    return event_dict


class _StderrHandler(logging.StreamHandler[IO[str]]):
    """Writes to whatever ``sys.stderr`` is when a line is emitted (as ``logging.lastResort`` does), so a
    test runner or a CLI runner that swaps the stream sees the lines, and a swapped-out one is never
    written to after it was closed."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _: IO[str]) -> None:
        pass


def configure_logging(settings: Settings, *, min_level: int = logging.NOTSET) -> None:
    """Log at ``EHRI_LOG_LEVEL``, or ``min_level`` if that is higher (the CLI: warnings and errors only).

    Idempotent: a second call replaces the handler it installed before (and nobody else's)."""
    level = max(min_level, logging.getLevelNamesMapping().get(settings.log_level.upper(), logging.INFO))
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, timestamper]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # Nothing here depends on the settings: loggers cached on first use (before a reconfiguration, or a
    # CLI command's configuration before the receiver's) still follow the level and the format, which
    # live in the stdlib levels and the handler's formatter.
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.processors.format_exc_info],
            processors=[_add_process, ProcessorFormatter.remove_processors_meta, _redact, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _OWN_HANDLERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)  # a warning is a log line too, not free text on stderr
