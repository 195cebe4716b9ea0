"""The reconciler's cohort Group and its resumable bulk export job.

- ``reconcile_groups``: per facility, the ``reconcile.group`` last read (when, how many Patient members,
  or why the read failed); ``reconcile_group_members``: the Patient ids that read listed. The cohort the
  per-patient strategies poll includes them; a failed read keeps the members of the last good one.
- ``reconcile_bulk_jobs``: the one ``$export`` job of a facility that a run left running (out of its time
  budget, or killed): its status URL (``Content-Location``), what it was asked (type, level, group,
  ``_since``), when it was kicked off, when it may be polled next (``Retry-After``), and how far its
  files are committed (``file_index``, ``line``: every file before ``file_index`` and its first ``line``
  lines). The next run polls it again instead of a new kick-off; one the server no longer knows is
  dropped and a new one kicked off.
  ``reconcile_bulk_seen``: the ids a full export's committed pages listed, so that a full export read
  over several runs is still compared whole with what is stored (what it no longer lists is read).

Revision ID: 0019
Revises: 0016
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reconcile_groups",
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), primary_key=True),
        sa.Column("group_id", sa.String(64), nullable=False),
        sa.Column("read_at", _TS),  # the last good read
        sa.Column("members", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("attempted_at", _TS, nullable=False),
        sa.Column("last_reason", sa.String(64)),  # why the last attempt failed (NULL: it did not)
    )
    op.create_table(
        "reconcile_group_members",
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), primary_key=True),
        sa.Column("group_id", sa.String(64), primary_key=True),
        sa.Column("patient_id", sa.String(64), primary_key=True),
    )
    op.create_table(
        "reconcile_bulk_jobs",
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), primary_key=True),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("group_id", sa.String(64)),
        sa.Column("since", _TS),  # NULL: a full export
        sa.Column("status_url", sa.Text, nullable=False),
        sa.Column("kicked_off_at", _TS, nullable=False),
        sa.Column("poll_after", _TS),  # not polled before (the server's Retry-After, capped)
        sa.Column("file_index", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("line", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "reconcile_bulk_seen",
        sa.Column("facility_id", sa.String(64), sa.ForeignKey("facilities.id"), primary_key=True),
        sa.Column("resource_id", sa.String(64), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("reconcile_bulk_seen")
    op.drop_table("reconcile_bulk_jobs")
    op.drop_table("reconcile_group_members")
    op.drop_table("reconcile_groups")
