"""expose accounts.is_active in account_balances

CREATE OR REPLACE VIEW may only append columns, so the downgrade has to drop
and recreate the previous definition.

Revision ID: 00284f3f859e
Revises: 002725999a2f
Create Date: 2023-11-07 15:34:12.002978

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "00284f3f859e"
down_revision: str | Sequence[str] | None = "002725999a2f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VIEW_BODY = """
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
               END::numeric(18, 2) AS balance{extra_columns}
          FROM accounts a
          LEFT JOIN (
                SELECT l.account_id, l.debit, l.credit
                  FROM journal_lines l
                  JOIN journal_entries e ON e.id = l.entry_id
                 WHERE e.status = 'posted'
          ) p ON p.account_id = a.id
         GROUP BY a.id, a.organisation_id, a.code, a.name, a.account_type, a.normal_balance
"""


def upgrade() -> None:
    body = _VIEW_BODY.format(extra_columns=",\n               a.is_active")
    op.execute(f"CREATE OR REPLACE VIEW account_balances AS {body}")


def downgrade() -> None:
    op.execute("DROP VIEW account_balances")
    op.execute(f"CREATE VIEW account_balances AS {_VIEW_BODY.format(extra_columns='')}")
