"""The ``ehr-ingest`` console script: the typer app assembled from one module per noun.

Exit codes and the import rules are in ``app.cli``'s docstring.
"""

from __future__ import annotations

import typer
from pydantic import ValidationError

from app.cli import (
    adt,
    alerts,
    backfill,
    db,
    dead_letters,
    dev,
    facilities,
    feeds,
    mllp,
    quarantine,
    reconcile,
    serve,
    subscriptions,
)

# No locals in tracebacks: a bug's traceback must not print settings, secrets or a resource body.
cli = typer.Typer(
    help="FHIR subscription ingestion: operator commands. Exit codes: 0 done, 1 failed result, "
    "2 usage or configuration error, 3 no connection to Postgres.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@cli.callback()
def _configure_logging() -> None:
    # Every command logs through the one setup (app.logging), warnings and errors only: results and
    # errors are printed by app.cli.render. Invalid settings are left to the commands that read them.
    import logging

    from app.logging import configure_logging
    from app.settings import get_settings

    try:
        settings = get_settings()
    except ValidationError:
        return
    configure_logging(settings, min_level=logging.WARNING)


cli.add_typer(facilities.cli, name="facilities")
cli.add_typer(db.cli, name="db")
cli.add_typer(dead_letters.cli, name="dead-letters")
cli.add_typer(quarantine.cli, name="quarantine")
cli.command("subscribe")(subscriptions.subscribe)
cli.command("unsubscribe")(subscriptions.unsubscribe)
cli.add_typer(mllp.cli, name="mllp")
cli.add_typer(adt.cli, name="adt")
cli.add_typer(reconcile.cli, name="reconcile")
cli.add_typer(alerts.cli, name="alerts")
cli.command("backfill")(backfill.backfill)
cli.command("feeds")(feeds.feeds)
cli.command("serve")(serve.serve)
cli.command("sim")(dev.sim)
cli.command("demo")(dev.demo)


def main() -> None:
    cli()
