"""create journal entries and journal lines

Double-entry bookkeeping: one journal entry has two or more lines, each line is
either a debit or a credit on one account. Balancing is enforced in the next
revision by a deferred constraint trigger.

Revision ID: 0008c5134b16
Revises: 0007bf68cfe8
Create Date: 2023-02-13 14:56:09.640771

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008c5134b16"
down_revision: str | Sequence[str] | None = "0007bf68cfe8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

journal_entry_status = sa.Enum("draft", "posted", "void", name="journal_entry_status")


def upgrade() -> None:
    op.create_table(
        "journal_entries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "organisation_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "organisations.id",
                name="fk_journal_entries_organisation_id",
                ondelete="RESTRICT",
            ),
            nullable=False,
        ),
        sa.Column(
            "fiscal_period_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "fiscal_periods.id",
                name="fk_journal_entries_fiscal_period_id",
                ondelete="RESTRICT",
            ),
            nullable=True,
        ),
        sa.Column("entry_date", sa.Date(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("status", journal_entry_status, nullable=False, server_default="draft"),
        sa.Column(
            "created_by",
            sa.BigInteger(),
            sa.ForeignKey("users.id", name="fk_journal_entries_created_by", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status <> 'posted' OR posted_at IS NOT NULL", name="ck_journal_entries_posted_at"
        ),
    )
    op.create_index(
        "ix_journal_entries_organisation_date",
        "journal_entries",
        ["organisation_id", "entry_date"],
    )

    op.create_table(
        "journal_lines",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "entry_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "journal_entries.id", name="fk_journal_lines_entry_id", ondelete="CASCADE"
            ),
            nullable=False,
        ),
        sa.Column("line_no", sa.SmallInteger(), nullable=False),
        sa.Column(
            "account_id",
            sa.BigInteger(),
            sa.ForeignKey("accounts.id", name="fk_journal_lines_account_id", ondelete="RESTRICT"),
            nullable=False,
        ),
        sa.Column("debit", sa.Numeric(18, 2), nullable=False, server_default="0"),
        sa.Column("credit", sa.Numeric(18, 2), nullable=False, server_default="0"),
        sa.Column("description", sa.Text(), nullable=True),
        sa.CheckConstraint("debit >= 0 AND credit >= 0", name="ck_journal_lines_non_negative"),
        sa.CheckConstraint(
            "(debit > 0 AND credit = 0) OR (credit > 0 AND debit = 0)",
            name="ck_journal_lines_one_side",
        ),
        sa.UniqueConstraint("entry_id", "line_no", name="uq_journal_lines_entry_line_no"),
    )
    op.create_index("ix_journal_lines_account_id", "journal_lines", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_journal_lines_account_id", table_name="journal_lines")
    op.drop_table("journal_lines")
    op.drop_index("ix_journal_entries_organisation_date", table_name="journal_entries")
    op.drop_table("journal_entries")
    op.execute("DROP TYPE journal_entry_status")
