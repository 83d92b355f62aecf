"""record transaction-currency amounts on journal lines

debit/credit stay in the organisation's functional currency; lines booked in
another currency also keep the original amount and the rate used.

Revision ID: 00310393d2ec
Revises: 003073a5563e
Create Date: 2024-02-08 10:42:18.957330

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "00310393d2ec"
down_revision: str | Sequence[str] | None = "003073a5563e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("journal_lines", sa.Column("currency_code", sa.CHAR(3), nullable=True))
    op.add_column("journal_lines", sa.Column("amount_foreign", sa.Numeric(18, 2), nullable=True))
    op.add_column("journal_lines", sa.Column("fx_rate", sa.Numeric(24, 10), nullable=True))
    op.create_foreign_key(
        "fk_journal_lines_currency_code",
        "journal_lines",
        "currencies",
        ["currency_code"],
        ["code"],
        ondelete="RESTRICT",
    )
    op.create_check_constraint(
        "ck_journal_lines_foreign_amount",
        "journal_lines",
        "(currency_code IS NULL AND amount_foreign IS NULL AND fx_rate IS NULL)"
        " OR (currency_code IS NOT NULL AND amount_foreign IS NOT NULL AND fx_rate > 0)",
    )


def downgrade() -> None:
    op.drop_constraint("ck_journal_lines_foreign_amount", "journal_lines", type_="check")
    op.drop_constraint("fk_journal_lines_currency_code", "journal_lines", type_="foreignkey")
    op.drop_column("journal_lines", "fx_rate")
    op.drop_column("journal_lines", "amount_foreign")
    op.drop_column("journal_lines", "currency_code")
