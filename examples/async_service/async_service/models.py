"""ORM models of the migrated schema.

The schema's source of truth is the Alembic chain. The triggers are also attached to the metadata
(`after_create`) because the service's original test set-up built its databases with `create_all`
(see original_conftest.py); the migrations keep their own frozen copies, as migrations must.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CHAR,
    DDL,
    CheckConstraint,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    Text,
    event,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

INVOICE_STATUSES = ("draft", "posted", "void")
ACCOUNT_KINDS = ("asset", "liability", "equity", "revenue", "expense")


class Base(DeclarativeBase):
    pass


class Currency(Base):
    __tablename__ = "currencies"
    code: Mapped[str] = mapped_column(CHAR(3), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    minor_units: Mapped[int] = mapped_column(SmallInteger)


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Enum(*ACCOUNT_KINDS, name="account_kind"))


class VatRate(Base):
    __tablename__ = "vat_rates"
    country: Mapped[str] = mapped_column(CHAR(2), primary_key=True)
    rate: Mapped[Decimal] = mapped_column(Numeric(5, 4))


class Customer(Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(Text, unique=True)
    currency: Mapped[str] = mapped_column(CHAR(3), ForeignKey("currencies.code"))
    country: Mapped[str] = mapped_column(CHAR(2), server_default="US")
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (Index("ix_invoices_customer_issued", "customer_id", "issued_on"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    number: Mapped[str | None] = mapped_column(Text, unique=True)
    status: Mapped[str] = mapped_column(
        Enum(*INVOICE_STATUSES, name="invoice_status"), server_default="draft"
    )
    currency: Mapped[str] = mapped_column(CHAR(3), ForeignKey("currencies.code"))
    issued_on: Mapped[dt.date] = mapped_column(Date)
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2), server_default="0")
    vat: Mapped[Decimal] = mapped_column(Numeric(12, 2), server_default="0")
    posted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice", cascade="all, delete-orphan", lazy="selectin"
    )


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"
    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"))
    description: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(Integer, CheckConstraint("quantity > 0"))
    unit_price: Mapped[Decimal] = mapped_column(Numeric(12, 2), CheckConstraint("unit_price >= 0"))
    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class JournalEntry(Base):
    __tablename__ = "journal_entries"
    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"))
    posted_on: Mapped[dt.date] = mapped_column(Date)
    memo: Mapped[str] = mapped_column(Text)
    lines: Mapped[list[JournalLine]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class JournalLine(Base):
    __tablename__ = "journal_lines"
    __table_args__ = (
        CheckConstraint(
            "debit >= 0 AND credit >= 0 AND (debit = 0) <> (credit = 0)", name="one_sided"
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id", ondelete="CASCADE"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    debit: Mapped[Decimal] = mapped_column(Numeric(12, 2), server_default="0")
    credit: Mapped[Decimal] = mapped_column(Numeric(12, 2), server_default="0")


class AuditEvent(Base):
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    subject_id: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


# The triggers, for `create_all` (the original test set-up). Same SQL as migrations 0005 and 0012.
_TRIGGERS = [
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
    """,
    """
    CREATE CONSTRAINT TRIGGER entry_balanced
        AFTER INSERT OR UPDATE OR DELETE ON journal_lines
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION check_entry_balanced()
    """,
    """
    CREATE FUNCTION guard_posted_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
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
    """,
    """
    CREATE TRIGGER posted_invoice_immutable BEFORE UPDATE OR DELETE ON invoices
        FOR EACH ROW EXECUTE FUNCTION guard_posted_invoice()
    """,
]
for _statement in _TRIGGERS:
    event.listen(Base.metadata, "after_create", DDL(_statement.replace("%", "%%")))  # type: ignore[no-untyped-call]
