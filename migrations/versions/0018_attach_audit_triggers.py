"""attach audit triggers to ledger tables

Revision ID: 00187a1a97e6
Revises: 001725ca3799
Create Date: 2023-06-02 09:37:45.116092

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "00187a1a97e6"
down_revision: str | Sequence[str] | None = "001725ca3799"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AUDITED_TABLES = ("accounts", "fiscal_periods", "journal_entries", "fx_rates")


def upgrade() -> None:
    for table in AUDITED_TABLES:
        op.execute(
            f"CREATE TRIGGER audit_{table} "
            f"AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_row_change()"
        )


def downgrade() -> None:
    for table in reversed(AUDITED_TABLES):
        op.execute(f"DROP TRIGGER audit_{table} ON {table}")
