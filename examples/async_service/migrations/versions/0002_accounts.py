"""chart of accounts, seeded"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    kind = sa.Enum("asset", "liability", "equity", "revenue", "expense", name="account_kind")
    accounts = op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", kind, nullable=False),
    )
    op.bulk_insert(
        accounts,
        [
            {"code": "1000", "name": "Cash", "kind": "asset"},
            {"code": "1100", "name": "Accounts receivable", "kind": "asset"},
            {"code": "2100", "name": "VAT payable", "kind": "liability"},
            {"code": "3000", "name": "Retained earnings", "kind": "equity"},
            {"code": "4000", "name": "Sales", "kind": "revenue"},
            {"code": "6000", "name": "Bad debts", "kind": "expense"},
        ],
    )


def downgrade() -> None:
    op.drop_table("accounts")
    op.execute("DROP TYPE account_kind")
