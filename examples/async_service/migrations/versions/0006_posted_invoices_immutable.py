"""a posted invoice may be changed only by the transaction that posted it (xmin guard)"""

from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    # A row's xmin is the id of the transaction that wrote its current version. Inside a SAVEPOINT
    # that is the subtransaction's id, not pg_current_xact_id(): this guard is why tests that post
    # invoices need real transactions, not SAVEPOINT (rollback) isolation.
    op.execute(
        """
        CREATE FUNCTION guard_posted_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.status <> 'draft' AND OLD.xmin <> pg_current_xact_id()::xid THEN
                RAISE EXCEPTION 'invoice % is posted: it cannot be changed', OLD.id
                    USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
            RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER posted_invoice_immutable BEFORE UPDATE OR DELETE ON invoices
            FOR EACH ROW EXECUTE FUNCTION guard_posted_invoice()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER posted_invoice_immutable ON invoices")
    op.execute("DROP FUNCTION guard_posted_invoice()")
