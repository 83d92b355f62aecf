"""create fx rates

One rate per currency pair per day (base -> quote), e.g. the ECB reference
rates imported nightly.

Revision ID: 0014fe2c2513
Revises: 0013b75f0b32
Create Date: 2023-04-12 08:55:26.448730

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0014fe2c2513"
down_revision: str | Sequence[str] | None = "0013b75f0b32"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fx_rates",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "base_currency",
            sa.CHAR(3),
            sa.ForeignKey("currencies.code", name="fk_fx_rates_base_currency"),
            nullable=False,
        ),
        sa.Column(
            "quote_currency",
            sa.CHAR(3),
            sa.ForeignKey("currencies.code", name="fk_fx_rates_quote_currency"),
            nullable=False,
        ),
        sa.Column("rate_date", sa.Date(), nullable=False),
        sa.Column("rate", sa.Numeric(18, 8), nullable=False),
        sa.Column("source", sa.String(32), nullable=False, server_default="ecb"),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("rate > 0", name="ck_fx_rates_rate_positive"),
        sa.CheckConstraint("base_currency <> quote_currency", name="ck_fx_rates_distinct_pair"),
        sa.UniqueConstraint(
            "base_currency", "quote_currency", "rate_date", name="uq_fx_rates_pair_date"
        ),
    )


def downgrade() -> None:
    op.drop_table("fx_rates")
