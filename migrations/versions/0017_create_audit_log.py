"""create audit log and generic row-change trigger function

The application sets ``SET LOCAL finreport.user_id = '<id>'`` per transaction;
the trigger records it when present.

Revision ID: 001725ca3799
Revises: 0016ab20bb0b
Create Date: 2023-06-01 14:02:11.903456

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "001725ca3799"
down_revision: str | Sequence[str] | None = "0016ab20bb0b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

audit_action = postgresql.ENUM("INSERT", "UPDATE", "DELETE", name="audit_action")


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("action", audit_action, nullable=False),
        sa.Column("row_id", sa.Text(), nullable=True),
        sa.Column("old_data", postgresql.JSONB(), nullable=True),
        sa.Column("new_data", postgresql.JSONB(), nullable=True),
        sa.Column("changed_by", sa.Text(), nullable=True),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "transaction_id",
            sa.BigInteger(),
            nullable=False,
            server_default=sa.text("txid_current()"),
        ),
    )
    op.create_index("ix_audit_log_table_row", "audit_log", ["table_name", "row_id"])
    op.create_index("ix_audit_log_changed_at", "audit_log", ["changed_at"], postgresql_using="brin")
    op.execute(
        """
        CREATE FUNCTION audit_log_row_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            v_old jsonb;
            v_new jsonb;
        BEGIN
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                v_old := to_jsonb(OLD);
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                v_new := to_jsonb(NEW);
            END IF;
            IF TG_OP = 'UPDATE' AND v_old = v_new THEN
                RETURN NULL;
            END IF;

            INSERT INTO audit_log (table_name, action, row_id, old_data, new_data, changed_by)
            VALUES (
                TG_TABLE_NAME,
                TG_OP::audit_action,
                coalesce(v_new, v_old) ->> 'id',
                v_old,
                v_new,
                nullif(current_setting('finreport.user_id', true), '')
            );
            RETURN NULL;
        END;
        $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION audit_log_row_change()")
    op.drop_index("ix_audit_log_changed_at", table_name="audit_log")
    op.drop_index("ix_audit_log_table_row", table_name="audit_log")
    op.drop_table("audit_log")
    op.execute("DROP TYPE audit_action")
