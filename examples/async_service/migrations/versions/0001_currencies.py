"""currencies, with the seed rows the app cannot run without"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    currencies = op.create_table(
        "currencies",
        sa.Column("code", sa.CHAR(3), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("minor_units", sa.SmallInteger, nullable=False),
    )
    op.bulk_insert(
        currencies,
        [
            {"code": "USD", "name": "US dollar", "minor_units": 2},
            {"code": "EUR", "name": "Euro", "minor_units": 2},
            {"code": "GBP", "name": "Pound sterling", "minor_units": 2},
            {"code": "CHF", "name": "Swiss franc", "minor_units": 2},
            {"code": "JPY", "name": "Japanese yen", "minor_units": 0},
        ],
    )


def downgrade() -> None:
    op.drop_table("currencies")
