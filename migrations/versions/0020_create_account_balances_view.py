"""create account_balances view

Revision ID: 0020d8175f6c
Revises: 0019751d3ebe
Create Date: 2023-07-05 15:51:08.204671

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0020d8175f6c"
down_revision: str | Sequence[str] | None = "0019751d3ebe"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE VIEW account_balances AS
        SELECT a.id AS account_id,
               a.organisation_id,
               a.code,
               a.name,
               a.account_type,
               coalesce(sum(p.debit), 0)::numeric(18, 2) AS total_debit,
               coalesce(sum(p.credit), 0)::numeric(18, 2) AS total_credit,
               CASE WHEN a.normal_balance = 'debit'
                    THEN coalesce(sum(p.debit - p.credit), 0)
                    ELSE coalesce(sum(p.credit - p.debit), 0)
               END::numeric(18, 2) AS balance
          FROM accounts a
          LEFT JOIN (
                SELECT l.account_id, l.debit, l.credit
                  FROM journal_lines l
                  JOIN journal_entries e ON e.id = l.entry_id
                 WHERE e.status = 'posted'
          ) p ON p.account_id = a.id
         GROUP BY a.id, a.organisation_id, a.code, a.name, a.account_type, a.normal_balance
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW account_balances")
