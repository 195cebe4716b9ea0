"""Everything the CLI prints goes through here: results on stdout, errors on stderr, exit codes.

Values from the database or from files (ids, reasons, details) are printed as plain text, never as rich
markup, so a ``[`` in a detail cannot restyle or hide output. Nothing here prints a resource body:
commands pass ids, reasons and counts only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran; its result is a failure (the demo lost a change)
EXIT_USAGE = 2  # bad arguments or configuration: the same convention as click's usage errors
EXIT_UNAVAILABLE = 3  # no connection to Postgres: nothing changed, run it again later


# A console per print, not per process: each one reads the width (COLUMNS, the terminal) when it is
# used, so a wider COLUMNS for a pipe or a test applies, and redirected streams are honoured.
def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def line(message: str) -> None:
    """One line of plain text on stdout (never interpreted as markup)."""
    _out().print(Text(message), soft_wrap=True)


def table(columns: Sequence[str], rows: Iterable[Sequence[str]], *, title: str | None = None) -> None:
    """A table on stdout; cells are plain text and wrap rather than being cut short with an ellipsis
    (an id or a reason slug copied from a narrow terminal or a pipe must be whole)."""
    grid = Table(title=title)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(Text(cell) for cell in row))
    _out().print(grid)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error <message>`` as one line on stderr and exit with ``code``.

    Multi-line messages (YAML marks, pydantic's validation report) are folded into one line so that the
    error stays one greppable line in a terminal, a cron mail or a CI log."""
    _err().print(Text.assemble(("error", "bold red"), " ", " ".join(message.split())), soft_wrap=True)
    raise typer.Exit(code)
