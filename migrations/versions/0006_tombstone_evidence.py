"""Tombstones say why: ``deletion`` on resources and history, shown in current_resources; and
``resources.from_payload``: whether the current body was sent by the EHR (a full-resource notification)
rather than read from it, which the version guard needs (a payload never revives a tombstone).

Values: ``gone`` (the EHR answered 410), ``not_found_confirmed`` (404 on two reads a back-off apart),
``not_found_announced`` (404 for a delete the EHR announced), ``not_found`` (404 from a vendor whose
adapter treats a 404 as final). NULL on live rows and on tombstones written before this revision.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.history import CONSUMER_VIEW_COMMENT, consumer_views_0004

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VIEW = """
    CREATE OR REPLACE VIEW current_resources AS
    SELECT facility_id, resource_type, resource_id, version_id, last_updated, deleted, resource,
           ingested_at{extra}
    FROM resources
"""


def upgrade() -> None:
    op.add_column("resources", sa.Column("deletion", sa.String(32)))
    op.add_column("resource_history", sa.Column("deletion", sa.String(32)))
    op.add_column(
        "resources", sa.Column("from_payload", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    # A new column goes last: CREATE OR REPLACE VIEW keeps the existing ones as they were.
    op.execute(_VIEW.format(extra=", deletion"))


def downgrade() -> None:
    # The consumer views of 0004 select whole rows of ``resources`` (``SELECT *``), so they bound the
    # columns added here: drop them first, and create them again once the columns are gone.
    views = consumer_views_0004()
    for name in views:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute("DROP VIEW current_resources")
    op.execute(_VIEW.format(extra=""))
    op.execute(
        "COMMENT ON VIEW current_resources IS "
        "'Consumer contract: the current version of every FHIR resource per facility. "
        "deleted = true is a tombstone (resource keeps the last known body, or NULL if none was seen). "
        "Columns are stable; new ones may be added.'"
    )
    op.drop_column("resources", "from_payload")
    op.drop_column("resource_history", "deletion")
    op.drop_column("resources", "deletion")
    for name, body in views.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
        op.execute(f"COMMENT ON VIEW {name} IS '{CONSUMER_VIEW_COMMENT}'")
