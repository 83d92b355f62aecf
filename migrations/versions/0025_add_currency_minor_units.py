"""add currencies.minor_units (ISO 4217 exponent)

Revision ID: 0025bc2ceb51
Revises: 0024f96b72bc
Create Date: 2023-10-02 11:47:59.731268

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0025bc2ceb51"
down_revision: str | Sequence[str] | None = "0024f96b72bc"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ZERO_DECIMAL_CURRENCIES = ("JPY", "KRW", "ISK", "CLP", "VND")


def upgrade() -> None:
    op.add_column(
        "currencies",
        sa.Column("minor_units", sa.SmallInteger(), nullable=False, server_default="2"),
    )
    codes = ", ".join(f"'{code}'" for code in ZERO_DECIMAL_CURRENCIES)
    op.execute(f"UPDATE currencies SET minor_units = 0 WHERE code IN ({codes})")
    op.create_check_constraint(
        "ck_currencies_minor_units_range", "currencies", "minor_units BETWEEN 0 AND 4"
    )


def downgrade() -> None:
    op.drop_constraint("ck_currencies_minor_units_range", "currencies", type_="check")
    op.drop_column("currencies", "minor_units")
