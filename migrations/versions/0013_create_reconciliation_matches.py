"""create reconciliation matches between statement lines and journal lines

Revision ID: 0013b75f0b32
Revises: 0012366a385a
Create Date: 2023-04-04 15:29:41.013377

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013b75f0b32"
down_revision: str | Sequence[str] | None = "0012366a385a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

match_method = sa.Enum("auto", "rule", "manual", name="match_method")


def upgrade() -> None:
    op.create_table(
        "reconciliation_matches",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column(
            "statement_line_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "bank_statement_lines.id",
                name="fk_reconciliation_matches_statement_line_id",
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column(
            "journal_line_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "journal_lines.id",
                name="fk_reconciliation_matches_journal_line_id",
                ondelete="CASCADE",
            ),
            nullable=False,
        ),
        sa.Column("matched_amount", sa.Numeric(18, 2), nullable=False),
        sa.Column("method", match_method, nullable=False),
        sa.Column(
            "matched_by",
            sa.BigInteger(),
            sa.ForeignKey(
                "users.id", name="fk_reconciliation_matches_matched_by", ondelete="SET NULL"
            ),
            nullable=True,
        ),
        sa.Column(
            "matched_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint("matched_amount > 0", name="ck_reconciliation_matches_amount_positive"),
        sa.UniqueConstraint(
            "statement_line_id",
            "journal_line_id",
            name="uq_reconciliation_matches_pair",
        ),
    )
    op.create_index(
        "ix_reconciliation_matches_journal_line_id",
        "reconciliation_matches",
        ["journal_line_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_reconciliation_matches_journal_line_id", table_name="reconciliation_matches")
    op.drop_table("reconciliation_matches")
    op.execute("DROP TYPE match_method")
