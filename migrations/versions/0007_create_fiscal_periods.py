"""create fiscal periods

Revision ID: 0007bf68cfe8
Revises: 00065fe614c6
Create Date: 2023-02-06 10:31:58.319026

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007bf68cfe8"
down_revision: str | Sequence[str] | None = "00065fe614c6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

fiscal_period_status = sa.Enum("open", "closed", "locked", name="fiscal_period_status")


def upgrade() -> None:
    op.create_table(
        "fiscal_periods",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "organisation_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "organisations.id", name="fk_fiscal_periods_organisation_id", ondelete="CASCADE"
            ),
            nullable=False,
        ),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("end_date", sa.Date(), nullable=False),
        sa.Column("status", fiscal_period_status, nullable=False, server_default="open"),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "closed_by",
            sa.BigInteger(),
            sa.ForeignKey("users.id", name="fk_fiscal_periods_closed_by", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.CheckConstraint("end_date >= start_date", name="ck_fiscal_periods_date_order"),
        sa.CheckConstraint(
            "(status = 'open') = (closed_at IS NULL)", name="ck_fiscal_periods_closed_at"
        ),
        sa.UniqueConstraint(
            "organisation_id", "start_date", name="uq_fiscal_periods_organisation_start"
        ),
        sa.UniqueConstraint("organisation_id", "name", name="uq_fiscal_periods_organisation_name"),
    )


def downgrade() -> None:
    op.drop_table("fiscal_periods")
    op.execute("DROP TYPE fiscal_period_status")
