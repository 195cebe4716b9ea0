"""ADT rows committed before their PID/PV1 fields are read: ``adt_inbox.parsed``.

The listener reads only MSH before it commits and answers ``AA`` (routing, dedup, the ACK); the worker
parses the rest of the message (python-hl7: PID-3, PV1, MRG) and fills the ``adt_events`` columns
before it claims the row. ``parsed`` is false until then; rows written before this revision were parsed
by the listener (true).

Revision ID: 0016
Revises: 0012
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "adt_inbox", sa.Column("parsed", sa.Boolean(), nullable=False, server_default=sa.text("true"))
    )
    op.create_index(
        "ix_adt_inbox_unparsed", "adt_inbox", ["facility_id", "id"], postgresql_where=sa.text("NOT parsed")
    )


def downgrade() -> None:
    op.drop_index("ix_adt_inbox_unparsed", table_name="adt_inbox")
    op.drop_column("adt_inbox", "parsed")
