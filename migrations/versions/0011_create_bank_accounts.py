"""create bank accounts

Each bank account is mirrored by exactly one ledger (cash) account.

Revision ID: 0011daa2560f
Revises: 0010ef38d3d4
Create Date: 2023-03-14 13:44:05.281907

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011daa2560f"
down_revision: str | Sequence[str] | None = "0010ef38d3d4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bank_accounts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "organisation_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "organisations.id", name="fk_bank_accounts_organisation_id", ondelete="CASCADE"
            ),
            nullable=False,
        ),
        sa.Column(
            "ledger_account_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "accounts.id", name="fk_bank_accounts_ledger_account_id", ondelete="RESTRICT"
            ),
            nullable=False,
        ),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("bank_name", sa.String(120), nullable=False),
        sa.Column("iban", sa.String(34), nullable=True),
        sa.Column("account_number_masked", sa.String(34), nullable=True),
        sa.Column(
            "currency_code",
            sa.CHAR(3),
            sa.ForeignKey(
                "currencies.code", name="fk_bank_accounts_currency_code", ondelete="RESTRICT"
            ),
            nullable=False,
        ),
        sa.Column("opened_on", sa.Date(), nullable=True),
        sa.Column("closed_on", sa.Date(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.UniqueConstraint("ledger_account_id", name="uq_bank_accounts_ledger_account_id"),
        sa.UniqueConstraint("organisation_id", "iban", name="uq_bank_accounts_organisation_iban"),
        sa.CheckConstraint(
            "closed_on IS NULL OR opened_on IS NULL OR closed_on >= opened_on",
            name="ck_bank_accounts_closed_after_opened",
        ),
        sa.CheckConstraint(
            "iban IS NULL OR iban ~ '^[A-Z]{2}[0-9]{2}[A-Z0-9]{1,30}$'",
            name="ck_bank_accounts_iban_format",
        ),
    )


def downgrade() -> None:
    op.drop_table("bank_accounts")
