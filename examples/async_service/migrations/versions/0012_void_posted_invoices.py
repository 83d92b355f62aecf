"""a posted invoice may be voided later: the guard lets exactly that change through"""

from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION guard_posted_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.status <> 'draft' AND OLD.xmin <> pg_current_xact_id()::xid THEN
                IF TG_OP = 'UPDATE' AND OLD.status = 'posted' AND NEW.status = 'void'
                   AND (NEW.number, NEW.total, NEW.vat) = (OLD.number, OLD.total, OLD.vat) THEN
                    RETURN NEW;
                END IF;
                RAISE EXCEPTION 'invoice % is %: it cannot be changed', OLD.id, OLD.status
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
            RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END $$
        """
    )


def downgrade() -> None:
    pass  # the 0006 guard is stricter; keeping this one is harmless
