"""VAT rates per country, seeded"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    rates = op.create_table(
        "vat_rates",
        sa.Column("country", sa.CHAR(2), primary_key=True),
        sa.Column("rate", sa.Numeric(5, 4), nullable=False),
    )
    op.bulk_insert(
        rates,
        [
            {"country": "US", "rate": "0"},
            {"country": "DE", "rate": "0.19"},
            {"country": "GB", "rate": "0.20"},
            {"country": "CH", "rate": "0.081"},
            {"country": "JP", "rate": "0.10"},
        ],
    )
    op.add_column(
        "invoices", sa.Column("vat", sa.Numeric(12, 2), nullable=False, server_default="0")
    )


def downgrade() -> None:
    op.drop_column("invoices", "vat")
    op.drop_table("vat_rates")
