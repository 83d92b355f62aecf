"""add functional currency to organisations

Existing organisations were all US entities, so they are backfilled with USD
before the column becomes NOT NULL.

Revision ID: 0005ca83889e
Revises: 000432280020
Create Date: 2023-01-24 11:08:36.002184

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005ca83889e"
down_revision: str | Sequence[str] | None = "000432280020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("organisations", sa.Column("functional_currency", sa.CHAR(3), nullable=True))
    op.execute(
        "UPDATE organisations SET functional_currency = 'USD' WHERE functional_currency IS NULL"
    )
    op.alter_column(
        "organisations", "functional_currency", existing_type=sa.CHAR(3), nullable=False
    )
    op.create_foreign_key(
        "fk_organisations_functional_currency",
        "organisations",
        "currencies",
        ["functional_currency"],
        ["code"],
        ondelete="RESTRICT",
    )


def downgrade() -> None:
    op.drop_constraint("fk_organisations_functional_currency", "organisations", type_="foreignkey")
    op.drop_column("organisations", "functional_currency")
