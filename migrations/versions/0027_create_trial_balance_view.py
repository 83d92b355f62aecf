"""create trial_balance view (posted lines per organisation, fiscal period and account)

Revision ID: 002725999a2f
Revises: 002634e8381a
Create Date: 2023-11-06 10:20:43.415502

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "002725999a2f"
down_revision: str | Sequence[str] | None = "002634e8381a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE VIEW trial_balance AS
        SELECT e.organisation_id,
               e.fiscal_period_id,
               a.id AS account_id,
               a.code AS account_code,
               a.name AS account_name,
               a.account_type,
               sum(l.debit)::numeric(18, 2) AS total_debit,
               sum(l.credit)::numeric(18, 2) AS total_credit,
               greatest(sum(l.debit) - sum(l.credit), 0)::numeric(18, 2) AS debit_balance,
               greatest(sum(l.credit) - sum(l.debit), 0)::numeric(18, 2) AS credit_balance
          FROM journal_lines l
          JOIN journal_entries e ON e.id = l.entry_id AND e.status = 'posted'
          JOIN accounts a ON a.id = l.account_id
         GROUP BY e.organisation_id, e.fiscal_period_id, a.id, a.code, a.name, a.account_type
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW trial_balance")
