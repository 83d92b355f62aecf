"""create bank statements and statement lines

Revision ID: 0012366a385a
Revises: 0011daa2560f
Create Date: 2023-03-21 11:03:17.664201

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012366a385a"
down_revision: str | Sequence[str] | None = "0011daa2560f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

statement_source = sa.Enum("manual", "csv", "camt053", "mt940", name="statement_source")


def upgrade() -> None:
    op.create_table(
        "bank_statements",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "bank_account_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "bank_accounts.id",
                name="fk_bank_statements_bank_account_id",
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("opening_balance", sa.Numeric(18, 2), nullable=False),
        sa.Column("closing_balance", sa.Numeric(18, 2), nullable=False),
        sa.Column("source", statement_source, nullable=False, server_default="manual"),
        sa.Column("source_filename", sa.String(255), nullable=True),
        sa.Column(
            "imported_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("period_end >= period_start", name="ck_bank_statements_period_order"),
        sa.UniqueConstraint(
            "bank_account_id",
            "period_start",
            "period_end",
            name="uq_bank_statements_account_period",
        ),
    )
    op.create_table(
        "bank_statement_lines",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "statement_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "bank_statements.id",
                name="fk_bank_statement_lines_statement_id",
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column("booking_date", sa.Date(), nullable=False),
        sa.Column("value_date", sa.Date(), nullable=True),
        sa.Column("amount", sa.Numeric(18, 2), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("counterparty_name", sa.String(200), nullable=True),
        sa.Column("bank_reference", sa.String(64), nullable=True),
        sa.CheckConstraint("amount <> 0", name="ck_bank_statement_lines_amount_non_zero"),
    )
    op.create_index(
        "ix_bank_statement_lines_statement_id", "bank_statement_lines", ["statement_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_bank_statement_lines_statement_id", table_name="bank_statement_lines")
    op.drop_table("bank_statement_lines")
    op.drop_table("bank_statements")
    op.execute("DROP TYPE statement_source")
