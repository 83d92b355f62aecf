"""customers.country, backfilled from the currency"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.add_column("customers", sa.Column("country", sa.CHAR(2)))
    op.execute(
        "UPDATE customers SET country = CASE currency WHEN 'EUR' THEN 'DE' WHEN 'GBP' THEN 'GB' "
        "WHEN 'CHF' THEN 'CH' WHEN 'JPY' THEN 'JP' ELSE 'US' END"
    )
    op.alter_column("customers", "country", nullable=False, server_default="US")


def downgrade() -> None:
    op.drop_column("customers", "country")
