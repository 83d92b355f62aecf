"""create organisations

Legal entities we report on. Subsidiaries and branches point at their parent so
consolidated reports can walk the group.

Revision ID: 0003ca37ca32
Revises: 0002f2733574
Create Date: 2023-01-16 09:40:03.557310

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003ca37ca32"
down_revision: str | Sequence[str] | None = "0002f2733574"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

entity_type = sa.Enum("company", "subsidiary", "branch", "fund", name="entity_type")


def upgrade() -> None:
    op.create_table(
        "organisations",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("legal_name", sa.String(300), nullable=True),
        sa.Column("entity_type", entity_type, nullable=False, server_default="company"),
        sa.Column(
            "parent_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "organisations.id", name="fk_organisations_parent_id", ondelete="RESTRICT"
            ),
            nullable=True,
        ),
        sa.Column("country_code", sa.CHAR(2), nullable=False),
        sa.Column("registration_number", sa.String(64), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint(
            "country_code ~ '^[A-Z]{2}$'", name="ck_organisations_country_code_format"
        ),
        sa.CheckConstraint(
            "parent_id IS NULL OR parent_id <> id", name="ck_organisations_not_own_parent"
        ),
        sa.UniqueConstraint("name", name="uq_organisations_name"),
    )
    op.create_index("ix_organisations_parent_id", "organisations", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_organisations_parent_id", table_name="organisations")
    op.drop_table("organisations")
    op.execute("DROP TYPE entity_type")
