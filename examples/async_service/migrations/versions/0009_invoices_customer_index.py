"""index for statements, built CONCURRENTLY (cannot run inside a transaction block)"""

from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_invoices_customer_issued "
            "ON invoices (customer_id, issued_on)"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_invoices_customer_issued")
