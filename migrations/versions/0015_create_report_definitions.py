"""create report definitions

Revision ID: 0015a89320e8
Revises: 0014fe2c2513
Create Date: 2023-05-03 16:18:52.197345

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0015a89320e8"
down_revision: str | Sequence[str] | None = "0014fe2c2513"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

report_kind = postgresql.ENUM(
    "balance_sheet",
    "income_statement",
    "cash_flow",
    "trial_balance",
    "custom",
    name="report_kind",
)


def upgrade() -> None:
    op.create_table(
        "report_definitions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "organisation_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "organisations.id",
                name="fk_report_definitions_organisation_id",
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("kind", report_kind, nullable=False),
        sa.Column(
            "config",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        sa.Column(
            "created_by",
            sa.BigInteger(),
            sa.ForeignKey("users.id", name="fk_report_definitions_created_by", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(config) = 'object'", name="ck_report_definitions_config_object"
        ),
        sa.UniqueConstraint("organisation_id", "name", name="uq_report_definitions_org_name"),
    )


def downgrade() -> None:
    op.drop_table("report_definitions")
    op.execute("DROP TYPE report_kind")
