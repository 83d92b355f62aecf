"""Settings and the database engine, built at import time from DATABASE_URL (12-factor style).

Nothing here knows about tests: finreport-testdb's `export_url_as = ["DATABASE_URL"]` sets the
variable to the worker's database before this module is imported.
"""

from __future__ import annotations

import os

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

DATABASE_URL = os.environ["DATABASE_URL"]

# pool_pre_ping: a pooled connection whose backend went away (a server restart, or a test database
# reset between tests) is replaced instead of failing the next request.
engine = create_async_engine(DATABASE_URL, pool_pre_ping=True)
SessionLocal: async_sessionmaker[AsyncSession] = async_sessionmaker(engine, expire_on_commit=False)
