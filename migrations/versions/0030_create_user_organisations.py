"""create user_organisations membership table

A user may belong to several organisations but has at most one default
(enforced with a partial unique index).

Revision ID: 003073a5563e
Revises: 00297b1b977e
Create Date: 2024-01-15 13:59:50.284716

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "003073a5563e"
down_revision: str | Sequence[str] | None = "00297b1b977e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_organisations",
        sa.Column(
            "user_id",
            sa.BigInteger(),
            sa.ForeignKey("users.id", name="fk_user_organisations_user_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "organisation_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "organisations.id",
                name="fk_user_organisations_organisation_id",
                ondelete="CASCADE",
            ),
            primary_key=True,
        ),
        sa.Column("is_default", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column(
            "joined_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )
    op.create_index(
        "ix_user_organisations_organisation_id", "user_organisations", ["organisation_id"]
    )
    op.create_index(
        "uq_user_organisations_one_default",
        "user_organisations",
        ["user_id"],
        unique=True,
        postgresql_where=sa.text("is_default"),
    )


def downgrade() -> None:
    op.drop_index("uq_user_organisations_one_default", table_name="user_organisations")
    op.drop_index("ix_user_organisations_organisation_id", table_name="user_organisations")
    op.drop_table("user_organisations")
