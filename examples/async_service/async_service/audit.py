"""The audit writer: a background asyncio task that writes events with its own sessions.

Use cases `emit()` after they commit and return at once; the writer batches what is queued into one
transaction. Because it runs concurrently with the request's own session, it must never share that
session's connection (asyncpg: "another operation is in progress").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

from . import db
from .models import AuditEvent

log = logging.getLogger(__name__)


class AuditWriter:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, int, dict[str, Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failed = 0

    async def __aenter__(self) -> AuditWriter:
        self._task = asyncio.create_task(self._run(), name="audit-writer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.drain()
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def emit(self, kind: str, subject_id: int, **payload: Any) -> None:
        self._queue.put_nowait((kind, subject_id, payload))

    async def drain(self) -> None:
        """Wait until everything emitted so far is written (or has failed)."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                async with db.SessionLocal.begin() as session:
                    session.add_all(
                        AuditEvent(kind=k, subject_id=s, payload=p) for k, s, p in batch
                    )
                self.written += len(batch)
            except Exception:
                log.exception("audit writer: %d event(s) lost", len(batch))
                self.failed += len(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
