"""add indexes for the reporting queries

Almost every report only reads posted entries, hence the partial index.

Revision ID: 0019751d3ebe
Revises: 00187a1a97e6
Create Date: 2023-06-20 12:26:33.871004

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0019751d3ebe"
down_revision: str | Sequence[str] | None = "00187a1a97e6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_journal_entries_posted",
        "journal_entries",
        ["organisation_id", "fiscal_period_id", "entry_date"],
        postgresql_where=sa.text("status = 'posted'"),
    )
    op.create_index("ix_journal_lines_entry_account", "journal_lines", ["entry_id", "account_id"])
    op.create_index(
        "ix_fiscal_periods_open",
        "fiscal_periods",
        ["organisation_id", "start_date"],
        postgresql_where=sa.text("status = 'open'"),
    )


def downgrade() -> None:
    op.drop_index("ix_fiscal_periods_open", table_name="fiscal_periods")
    op.drop_index("ix_journal_lines_entry_account", table_name="journal_lines")
    op.drop_index("ix_journal_entries_posted", table_name="journal_entries")
