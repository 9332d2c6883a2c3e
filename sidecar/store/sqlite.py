"""``sqlite:///path``: the embedded default; durable, WAL, one writer thread.

All statements run on one dedicated thread with one connection, so each
operation is a transaction that no other operation interleaves with: swap and
take are atomic across every concurrent request of the process. Expired
records are invisible at once and purged every minute.

A collection is the rows of ``members`` under one ``(ns, key)``: the primary
key is the index its reads walk. The schema is created with ``IF NOT
EXISTS``, so a database of the previous release gains the table on open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sidecar.store.base import Record, StoreUnavailable

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_expiry ON records (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS members (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    member TEXT NOT NULL,
    value TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (ns, key, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_expiry ON members (expires_at) WHERE expires_at IS NOT NULL;
"""

LIVE = "(expires_at IS NULL OR expires_at > ?)"


def path_from_url(url: str) -> str:
    # sqlite:///relative/path, sqlite:////absolute/path, sqlite:///:memory:
    rest = url.split("://", 1)[1]
    return rest[1:] if rest.startswith("/") else rest


class SQLiteStore:
    def __init__(self, url: str) -> None:
        self.path = path_from_url(url)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._conn: sqlite3.Connection | None = None
        self._purger: asyncio.Task[None] | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from exc

    def _open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # busy_timeout first: several worker processes open the file at once.
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            # Name the key and the file: "unable to open database file" alone
            # says neither which setting nor which path.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise StoreUnavailable(
                f"store_url (SIDECAR_STORE_URL): cannot open {Path(self.path).resolve()}: {reason}"
            ) from exc
        self._conn = conn

    async def open(self) -> None:
        await self._run(self._open)
        self._purger = asyncio.create_task(self._purge_forever())

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(60)
            with contextlib.suppress(StoreUnavailable):  # tried again next minute
                await self.purge_expired()

    async def purge_expired(self) -> int:
        def purge() -> int:
            now = time.time()
            cur = self._db.execute(
                "DELETE FROM records WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            )
            purged = cur.rowcount
            cur = self._db.execute(
                "DELETE FROM members WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            )
            return purged + cur.rowcount

        result: int = await self._run(purge)
        return result

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("store not open")
        return self._conn

    async def ping(self) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    # Each function below runs whole on the store thread.

    def _get(self, ns: str, key: str) -> Record | None:
        row = self._db.execute(
            f"SELECT value FROM records WHERE ns = ? AND key = ? AND {LIVE}",  # noqa: S608
            (ns, key, time.time()),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def _put(self, ns: str, key: str, value: Record, ttl: float | None) -> None:
        expires = time.time() + ttl if ttl is not None else None
        self._db.execute(
            "INSERT OR REPLACE INTO records (ns, key, value, expires_at) VALUES (?, ?, ?, ?)",
            (ns, key, json.dumps(value, separators=(",", ":")), expires),
        )

    def _transaction(self, fn: Any, *args: Any) -> Any:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(*args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def get(self, ns: str, key: str) -> Record | None:
        result: Record | None = await self._run(self._get, ns, key)
        return result

    async def put(self, ns: str, key: str, value: Record, ttl: float | None = None) -> None:
        await self._run(self._put, ns, key, value, ttl)

    async def put_if_absent(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> bool:
        def op() -> bool:
            if self._get(ns, key) is not None:
                return False
            self._put(ns, key, value, ttl)
            return True

        stored: bool = await self._run(self._transaction, op)
        return stored

    async def swap(
        self, ns: str, key: str, value: Record, ttl: float | None = None
    ) -> Record | None:
        def op() -> Record | None:
            old = self._get(ns, key)
            self._put(ns, key, value, ttl)
            return old

        old: Record | None = await self._run(self._transaction, op)
        return old

    async def take(self, ns: str, key: str) -> Record | None:
        def op() -> Record | None:
            old = self._get(ns, key)
            self._db.execute("DELETE FROM records WHERE ns = ? AND key = ?", (ns, key))
            return old

        old: Record | None = await self._run(self._transaction, op)
        return old

    async def delete(self, ns: str, key: str) -> None:
        await self._run(
            lambda: self._db.execute("DELETE FROM records WHERE ns = ? AND key = ?", (ns, key))
        )

    async def incr(self, ns: str, key: str, ttl: float) -> int:
        def op() -> int:
            current = self._get(ns, key)
            if current is None:
                self._put(ns, key, {"n": 1}, ttl)
                return 1
            count = int(current["n"]) + 1
            self._db.execute(
                "UPDATE records SET value = ? WHERE ns = ? AND key = ?",
                (json.dumps({"n": count}), ns, key),
            )
            return count

        count: int = await self._run(self._transaction, op)
        return count

    async def scan(self, ns: str) -> list[tuple[str, Record]]:
        def op() -> list[tuple[str, Record]]:
            rows = self._db.execute(
                f"SELECT key, value FROM records WHERE ns = ? AND {LIVE} ORDER BY key",  # noqa: S608
                (ns, time.time()),
            ).fetchall()
            return [(k, json.loads(v)) for k, v in rows]

        result: list[tuple[str, Record]] = await self._run(op)
        return result

    async def add_member(
        self, ns: str, key: str, member: str, value: Record, ttl: float | None = None
    ) -> None:
        expires = time.time() + ttl if ttl is not None else None
        await self._run(
            lambda: self._db.execute(
                "INSERT OR REPLACE INTO members (ns, key, member, value, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (ns, key, member, json.dumps(value, separators=(",", ":")), expires),
            )
        )

    async def remove_member(self, ns: str, key: str, member: str) -> None:
        await self._run(
            lambda: self._db.execute(
                "DELETE FROM members WHERE ns = ? AND key = ? AND member = ?", (ns, key, member)
            )
        )

    async def members(self, ns: str, key: str) -> list[tuple[str, Record]]:
        def op() -> list[tuple[str, Record]]:
            rows = self._db.execute(
                "SELECT member, value FROM members"  # noqa: S608
                f" WHERE ns = ? AND key = ? AND {LIVE} ORDER BY member",
                (ns, key, time.time()),
            ).fetchall()
            return [(m, json.loads(v)) for m, v in rows]

        result: list[tuple[str, Record]] = await self._run(op)
        return result
