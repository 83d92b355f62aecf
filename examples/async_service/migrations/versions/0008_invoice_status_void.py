"""invoice status 'void' (ALTER TYPE ... ADD VALUE, outside the migration's transaction)"""

from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    # PostgreSQL < 12 refused ADD VALUE in a transaction block, and a new value cannot be used in
    # the transaction that added it: production migrations run it in an autocommit block.
    with op.get_context().autocommit_block():
        op.execute("ALTER TYPE invoice_status ADD VALUE IF NOT EXISTS 'void'")


def downgrade() -> None:
    pass  # PostgreSQL cannot drop an enum value
