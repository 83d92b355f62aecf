"""double-entry journal; a DEFERRABLE INITIALLY DEFERRED constraint trigger keeps entries balanced"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "journal_entries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("invoice_id", sa.Integer, sa.ForeignKey("invoices.id")),
        sa.Column("posted_on", sa.Date, nullable=False),
        sa.Column("memo", sa.Text, nullable=False),
    )
    op.create_table(
        "journal_lines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "entry_id",
            sa.Integer,
            sa.ForeignKey("journal_entries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("debit", sa.Numeric(12, 2), nullable=False, server_default="0"),
        sa.Column("credit", sa.Numeric(12, 2), nullable=False, server_default="0"),
        sa.CheckConstraint(
            "debit >= 0 AND credit >= 0 AND (debit = 0) <> (credit = 0)", name="one_sided"
        ),
    )
    op.execute(
        """
        CREATE FUNCTION check_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            entry integer := CASE WHEN TG_OP = 'DELETE' THEN OLD.entry_id ELSE NEW.entry_id END;
            difference numeric;
        BEGIN
            SELECT coalesce(sum(debit - credit), 0) INTO difference
              FROM journal_lines WHERE entry_id = entry;
            IF difference <> 0 THEN
                RAISE EXCEPTION 'journal entry % is unbalanced by %', entry, difference
                    USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE CONSTRAINT TRIGGER entry_balanced
            AFTER INSERT OR UPDATE OR DELETE ON journal_lines
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION check_entry_balanced()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER entry_balanced ON journal_lines")
    op.execute("DROP FUNCTION check_entry_balanced()")
    op.drop_table("journal_lines")
    op.drop_table("journal_entries")
