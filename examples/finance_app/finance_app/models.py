"""SQLAlchemy models for the part of the finance-report schema this app uses.

The schema itself belongs to the Alembic migrations (repository root, `migrations/`); these classes
only map it, so there is no `create_all()` anywhere: tests get the migrated schema from the template.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import (
    CHAR,
    BigInteger,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import ENUM
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Enum types are created by the migrations; `create_type=False` keeps SQLAlchemy from trying.
ACCOUNT_TYPE = ENUM(
    "asset", "liability", "equity", "revenue", "expense", name="account_type", create_type=False
)
NORMAL_BALANCE = ENUM("debit", "credit", name="normal_balance", create_type=False)
ENTRY_STATUS = ENUM("draft", "posted", "void", name="journal_entry_status", create_type=False)


class Base(DeclarativeBase):
    pass


class Currency(Base):
    """Seeded by migration 0004 (USD, EUR, GBP, JPY, ...), so every clone has them."""

    __tablename__ = "currencies"

    code: Mapped[str] = mapped_column(CHAR(3), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str | None] = mapped_column(String(8))
    minor_units: Mapped[int] = mapped_column(SmallInteger, server_default="2")
    is_active: Mapped[bool] = mapped_column(server_default="true")


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    country_code: Mapped[str] = mapped_column(CHAR(2))
    functional_currency: Mapped[str] = mapped_column(CHAR(3), ForeignKey("currencies.code"))

    accounts: Mapped[list[Account]] = relationship(back_populates="organisation")


class Account(Base):
    """An account of an organisation's chart of accounts."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    account_type: Mapped[str] = mapped_column(ACCOUNT_TYPE)
    normal_balance: Mapped[str] = mapped_column(NORMAL_BALANCE)
    is_active: Mapped[bool] = mapped_column(server_default="true")

    organisation: Mapped[Organisation] = relationship(back_populates="accounts")


class JournalEntry(Base):
    """A double-entry journal entry. A deferred constraint trigger rejects, at COMMIT, an entry
    whose debits and credits differ; once posted, only voiding is allowed."""

    __tablename__ = "journal_entries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"))
    entry_number: Mapped[int] = mapped_column(Integer)
    entry_date: Mapped[dt.date] = mapped_column(Date)
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(ENTRY_STATUS, server_default="draft")
    posted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    lines: Mapped[list[JournalLine]] = relationship(
        back_populates="entry", order_by="JournalLine.line_no", cascade="all, delete-orphan"
    )


class JournalLine(Base):
    __tablename__ = "journal_lines"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"))
    line_no: Mapped[int] = mapped_column(SmallInteger)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    debit: Mapped[Decimal] = mapped_column(Numeric(18, 2), default=Decimal("0"))
    credit: Mapped[Decimal] = mapped_column(Numeric(18, 2), default=Decimal("0"))

    entry: Mapped[JournalEntry] = relationship(back_populates="lines")


#: A view (migrations 0027): posted lines summed per organisation, period and account.
trial_balance = Table(
    "trial_balance",
    Base.metadata,
    Column("organisation_id", BigInteger),
    Column("fiscal_period_id", BigInteger),
    Column("account_id", BigInteger),
    Column("account_code", String(32)),
    Column("account_name", String(200)),
    Column("total_debit", Numeric(18, 2)),
    Column("total_credit", Numeric(18, 2)),
    Column("debit_balance", Numeric(18, 2)),
    Column("credit_balance", Numeric(18, 2)),
)

#: The audit log (migrations 0017/0018): triggers record every change to audited tables.
audit_log = Table(
    "audit_log",
    Base.metadata,
    Column("id", BigInteger, primary_key=True),
    Column("table_name", Text),
    Column("row_id", Text),
)
