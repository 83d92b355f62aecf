"""create currencies and seed ISO 4217 codes we trade in

Revision ID: 000432280020
Revises: 0003ca37ca32
Create Date: 2023-01-18 13:25:51.904417

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "000432280020"
down_revision: str | Sequence[str] | None = "0003ca37ca32"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEED_CURRENCIES = [
    {"code": "USD", "name": "US Dollar", "symbol": "$", "numeric_code": 840},
    {"code": "EUR", "name": "Euro", "symbol": "€", "numeric_code": 978},
    {"code": "GBP", "name": "Pound Sterling", "symbol": "£", "numeric_code": 826},
    {"code": "JPY", "name": "Yen", "symbol": "¥", "numeric_code": 392},
    {"code": "CHF", "name": "Swiss Franc", "symbol": "CHF", "numeric_code": 756},
    {"code": "CAD", "name": "Canadian Dollar", "symbol": "CA$", "numeric_code": 124},
    {"code": "AUD", "name": "Australian Dollar", "symbol": "A$", "numeric_code": 36},
    {"code": "CNY", "name": "Yuan Renminbi", "symbol": "¥", "numeric_code": 156},
    {"code": "SEK", "name": "Swedish Krona", "symbol": "kr", "numeric_code": 752},
    {"code": "NOK", "name": "Norwegian Krone", "symbol": "kr", "numeric_code": 578},
    {"code": "NZD", "name": "New Zealand Dollar", "symbol": "NZ$", "numeric_code": 554},
    {"code": "HKD", "name": "Hong Kong Dollar", "symbol": "HK$", "numeric_code": 344},
    {"code": "SGD", "name": "Singapore Dollar", "symbol": "S$", "numeric_code": 702},
]


def upgrade() -> None:
    currencies = op.create_table(
        "currencies",
        sa.Column("code", sa.CHAR(3), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(8), nullable=True),
        sa.Column("numeric_code", sa.SmallInteger(), nullable=True),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.CheckConstraint("code ~ '^[A-Z]{3}$'", name="ck_currencies_code_format"),
        sa.UniqueConstraint("numeric_code", name="uq_currencies_numeric_code"),
    )
    op.bulk_insert(currencies, SEED_CURRENCIES)


def downgrade() -> None:
    op.drop_table("currencies")
