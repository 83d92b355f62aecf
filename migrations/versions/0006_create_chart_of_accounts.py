"""create chart of accounts

Revision ID: 00065fe614c6
Revises: 0005ca83889e
Create Date: 2023-02-01 16:47:12.774905

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "00065fe614c6"
down_revision: str | Sequence[str] | None = "0005ca83889e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

account_type = sa.Enum("asset", "liability", "equity", "revenue", "expense", name="account_type")
normal_balance = sa.Enum("debit", "credit", name="normal_balance")


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "organisation_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "organisations.id", name="fk_accounts_organisation_id", ondelete="CASCADE"
            ),
            nullable=False,
        ),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("account_type", account_type, nullable=False),
        sa.Column("normal_balance", normal_balance, nullable=False),
        sa.Column(
            "parent_id",
            sa.BigInteger(),
            sa.ForeignKey("accounts.id", name="fk_accounts_parent_id", ondelete="RESTRICT"),
            nullable=True,
        ),
        sa.Column("is_postable", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.UniqueConstraint("organisation_id", "code", name="uq_accounts_organisation_code"),
        sa.CheckConstraint(
            "parent_id IS NULL OR parent_id <> id", name="ck_accounts_not_own_parent"
        ),
    )
    op.create_index("ix_accounts_parent_id", "accounts", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_accounts_parent_id", table_name="accounts")
    op.drop_table("accounts")
    op.execute("DROP TYPE normal_balance")
    op.execute("DROP TYPE account_type")
