"""create report snapshots

Rendered report payloads are frozen as JSONB; the GIN index (jsonb_path_ops)
serves containment queries from the API (payload @> '{"currency": "EUR"}').

Revision ID: 0016ab20bb0b
Revises: 0015a89320e8
Create Date: 2023-05-10 10:47:03.558820

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0016ab20bb0b"
down_revision: str | Sequence[str] | None = "0015a89320e8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "report_snapshots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "report_definition_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "report_definitions.id",
                name="fk_report_snapshots_report_definition_id",
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column(
            "fiscal_period_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "fiscal_periods.id",
                name="fk_report_snapshots_fiscal_period_id",
                ondelete="SET NULL",
            ),
            nullable=True,
        ),
        sa.Column(
            "generated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "generated_by",
            sa.BigInteger(),
            sa.ForeignKey("users.id", name="fk_report_snapshots_generated_by", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("checksum", sa.CHAR(64), nullable=True),
    )
    op.create_index(
        "ix_report_snapshots_definition_generated",
        "report_snapshots",
        ["report_definition_id", sa.text("generated_at DESC")],
    )
    op.create_index(
        "ix_report_snapshots_payload",
        "report_snapshots",
        ["payload"],
        postgresql_using="gin",
        postgresql_ops={"payload": "jsonb_path_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_report_snapshots_payload", table_name="report_snapshots")
    op.drop_index("ix_report_snapshots_definition_generated", table_name="report_snapshots")
    op.drop_table("report_snapshots")
