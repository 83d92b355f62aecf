"""enforce balanced journal entries with a deferred constraint trigger

Lines are inserted one at a time, so the debit = credit rule can only hold once
all lines of an entry are written. A constraint trigger that is DEFERRABLE
INITIALLY DEFERRED runs at COMMIT (or at SET CONSTRAINTS ... IMMEDIATE) and
rejects the transaction if any touched entry does not balance.

Revision ID: 000965447c4a
Revises: 0008c5134b16
Create Date: 2023-02-15 17:20:44.908162

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "000965447c4a"
down_revision: str | Sequence[str] | None = "0008c5134b16"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION check_journal_entry_balanced() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            v_entry_ids bigint[];
            v_entry_id bigint;
            v_debit numeric;
            v_credit numeric;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                v_entry_ids := ARRAY[OLD.entry_id];
            ELSIF TG_OP = 'UPDATE' AND OLD.entry_id IS DISTINCT FROM NEW.entry_id THEN
                v_entry_ids := ARRAY[OLD.entry_id, NEW.entry_id];
            ELSE
                v_entry_ids := ARRAY[NEW.entry_id];
            END IF;

            FOREACH v_entry_id IN ARRAY v_entry_ids LOOP
                SELECT coalesce(sum(debit), 0), coalesce(sum(credit), 0)
                  INTO v_debit, v_credit
                  FROM journal_lines
                 WHERE entry_id = v_entry_id;

                IF v_debit <> v_credit THEN
                    RAISE EXCEPTION
                        'journal entry % is unbalanced: debits % <> credits %',
                        v_entry_id, v_debit, v_credit
                        USING ERRCODE = 'check_violation',
                              CONSTRAINT = 'journal_entry_balanced',
                              TABLE = 'journal_lines';
                END IF;
            END LOOP;
            RETURN NULL;
        END;
        $$
        """
    )
    op.execute(
        """
        CREATE CONSTRAINT TRIGGER journal_entry_balanced
        AFTER INSERT OR UPDATE OF entry_id, debit, credit OR DELETE ON journal_lines
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION check_journal_entry_balanced()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER journal_entry_balanced ON journal_lines")
    op.execute("DROP FUNCTION check_journal_entry_balanced()")
