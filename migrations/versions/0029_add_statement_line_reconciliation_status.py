"""add reconciliation status to bank statement lines

The reconciliation screen lists only lines that still need work, hence the
partial index.

Revision ID: 00297b1b977e
Revises: 00284f3f859e
Create Date: 2023-12-04 09:11:27.650143

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "00297b1b977e"
down_revision: str | Sequence[str] | None = "00284f3f859e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

reconciliation_status = postgresql.ENUM(
    "unmatched",
    "partially_matched",
    "matched",
    "ignored",
    name="reconciliation_status",
    create_type=False,
)


def upgrade() -> None:
    # add_column does not emit CREATE TYPE by itself.
    reconciliation_status.create(op.get_bind(), checkfirst=False)
    op.add_column(
        "bank_statement_lines",
        sa.Column("status", reconciliation_status, nullable=False, server_default="unmatched"),
    )
    op.execute(
        """
        UPDATE bank_statement_lines AS sl
           SET status = CASE
                   WHEN m.matched >= abs(sl.amount) THEN 'matched'::reconciliation_status
                   ELSE 'partially_matched'::reconciliation_status
               END
          FROM (
                SELECT statement_line_id, sum(matched_amount) AS matched
                  FROM reconciliation_matches
                 GROUP BY statement_line_id
          ) AS m
         WHERE m.statement_line_id = sl.id
        """
    )
    op.create_index(
        "ix_bank_statement_lines_open",
        "bank_statement_lines",
        ["statement_id", "booking_date"],
        postgresql_where=sa.text("status IN ('unmatched', 'partially_matched')"),
    )


def downgrade() -> None:
    op.drop_index("ix_bank_statement_lines_open", table_name="bank_statement_lines")
    op.drop_column("bank_statement_lines", "status")
    reconciliation_status.drop(op.get_bind(), checkfirst=False)
