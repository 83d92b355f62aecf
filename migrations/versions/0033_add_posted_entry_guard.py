"""guard posted journal entries against edits

Once posted, an entry may only be voided; its date, organisation, period and
number are frozen, and it can never go back to draft.

Revision ID: 0033a77394f1
Revises: 00324f0b090c
Create Date: 2024-04-22 11:29:04.713659

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0033a77394f1"
down_revision: str | Sequence[str] | None = "00324f0b090c"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION guard_posted_journal_entry() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.status = 'draft'
               OR NEW.organisation_id IS DISTINCT FROM OLD.organisation_id
               OR NEW.fiscal_period_id IS DISTINCT FROM OLD.fiscal_period_id
               OR NEW.entry_date IS DISTINCT FROM OLD.entry_date
               OR NEW.entry_number IS DISTINCT FROM OLD.entry_number THEN
                RAISE EXCEPTION 'journal entry % is posted and can only be voided', OLD.id
                    USING ERRCODE = 'integrity_constraint_violation',
                          TABLE = 'journal_entries';
            END IF;
            RETURN NEW;
        END;
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER guard_posted_journal_entry
        BEFORE UPDATE ON journal_entries
        FOR EACH ROW
        WHEN (OLD.status = 'posted')
        EXECUTE FUNCTION guard_posted_journal_entry()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER guard_posted_journal_entry ON journal_entries")
    op.execute("DROP FUNCTION guard_posted_journal_entry()")
