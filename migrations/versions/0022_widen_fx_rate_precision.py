"""widen fx_rates.rate precision to 10 decimal places

Some crosses (e.g. JPY/CHF) lost precision with 8 places.

Revision ID: 002272df1692
Revises: 00219ffcfb71
Create Date: 2023-08-09 13:38:21.554089

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "002272df1692"
down_revision: str | Sequence[str] | None = "00219ffcfb71"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "fx_rates",
        "rate",
        existing_type=sa.Numeric(18, 8),
        type_=sa.Numeric(24, 10),
        existing_nullable=False,
    )


def downgrade() -> None:
    op.alter_column(
        "fx_rates",
        "rate",
        existing_type=sa.Numeric(24, 10),
        type_=sa.Numeric(18, 8),
        existing_nullable=False,
        postgresql_using="round(rate, 8)",
    )
