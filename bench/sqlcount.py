"""Statements and commits a worker process sends to PostgreSQL, counted in the process.

``install()`` wraps psycopg 3 (which every contender on PostgreSQL talks through:
Django's backend, DBOS's SQLAlchemy engine, django-absurd's own async connection) and
keeps two running totals in a small file per process (``counts-PID`` in
BENCH_SQLCOUNT_DIR), rewritten in place on every statement, so the driver reads a
worker's figures while it runs and after it is killed. A statement is one query sent:
each ``execute`` (``executemany``: one per parameter set) and each command psycopg
sends itself (BEGIN, COMMIT, ROLLBACK, SAVEPOINT). A commit is a transaction the
server commits: a COMMIT, or a statement run in autocommit mode outside a
transaction block (an ``executemany`` there is one: psycopg sends it as one pipeline),
as PostgreSQL's ``xact_commit`` counts them; checked against it, connection by
connection, when this was written (the server also counts one per new connection). Server-side figures
(``pg_stat_database``) are not used: a backend reports them up to 10 s late, longer
than a run. The wrapping costs about a microsecond per statement, for every contender.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Any

_FORMAT = "qq"  # statements, commits
_SIZE = struct.calcsize(_FORMAT)


class _Counter:
    def __init__(self, path: Path) -> None:
        path.write_bytes(b"\0" * _SIZE)
        with path.open("r+b") as f:
            self.map = mmap.mmap(f.fileno(), _SIZE)
        self.statements = self.commits = 0
        self.lock = threading.Lock()

    def add(self, statements: int, commits: int) -> None:
        with self.lock:
            self.statements += statements
            self.commits += commits
            struct.pack_into(_FORMAT, self.map, 0, self.statements, self.commits)


def _commits(conn: Any, query: Any) -> int:
    """1 if ``query``, sent on ``conn`` in this order, ends in a commit on the server.

    Whether an autocommit connection is inside a transaction block is tracked from the
    BEGIN and COMMIT it was given, not read off the connection: with statements from
    several tasks waiting for one connection, its state at the call is not its state
    when the statement is sent.
    """
    text = query.encode() if isinstance(query, str) else query
    head = text[:16].lstrip().upper() if isinstance(text, bytes) else b""
    if head.startswith((b"BEGIN", b"START")):
        conn._bench_block = True
        return 0
    if head.startswith((b"COMMIT", b"END", b"ABORT")) or (
        head.startswith(b"ROLLBACK") and not head.startswith(b"ROLLBACK TO")
    ):
        conn._bench_block = False
        return int(head.startswith((b"COMMIT", b"END")))
    return int(conn.autocommit and not getattr(conn, "_bench_block", False))


def install() -> None:
    """Count this process's statements, if BENCH_SQLCOUNT_DIR is set; else do nothing."""
    where = os.environ.get("BENCH_SQLCOUNT_DIR")
    if not where:
        return
    import psycopg
    from psycopg._connection_base import BaseConnection

    counter = _Counter(Path(where) / f"counts-{os.getpid()}")
    exec_command = BaseConnection._exec_command

    def counted_command(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        counter.add(1, _commits(self, command))
        return exec_command(self, command, *args, **kwargs)

    BaseConnection._exec_command = counted_command  # type: ignore[method-assign]

    # Every cursor class the contenders use inherits these (client-side binding too).
    _wrap_sync(psycopg.Cursor, counter)
    _wrap_async(psycopg.AsyncCursor, counter)


def _wrap_sync(cls: Any, counter: _Counter) -> None:
    execute, executemany = cls.execute, cls.executemany

    def counted_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        counter.add(1, _commits(self.connection, query))
        return execute(self, query, *args, **kwargs)

    def counted_many(self: Any, query: Any, params_seq: Any, *args: Any, **kw: Any) -> Any:
        params_seq = list(params_seq)
        counter.add(len(params_seq), _commits(self.connection, query))
        return executemany(self, query, params_seq, *args, **kw)

    cls.execute, cls.executemany = counted_execute, counted_many


def _wrap_async(cls: Any, counter: _Counter) -> None:
    execute, executemany = cls.execute, cls.executemany

    async def counted_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        counter.add(1, _commits(self.connection, query))
        return await execute(self, query, *args, **kwargs)

    async def counted_many(self: Any, query: Any, params_seq: Any, *args: Any, **kw: Any) -> Any:
        params_seq = list(params_seq)
        counter.add(len(params_seq), _commits(self.connection, query))
        return await executemany(self, query, params_seq, *args, **kw)

    cls.execute, cls.executemany = counted_execute, counted_many


def read(where: Path, pids: list[int]) -> tuple[int, int]:
    """The statements and commits the processes ``pids`` counted so far (0 if none)."""
    statements = commits = 0
    for pid in pids:
        path = where / f"counts-{pid}"
        if path.exists() and path.stat().st_size >= _SIZE:
            s, c = struct.unpack_from(_FORMAT, path.read_bytes())
            statements, commits = statements + s, commits + c
    return statements, commits


def since(where: Path, pids: list[int], before: tuple[int, int]) -> tuple[int, int]:
    """The statements and commits counted since ``before`` (a ``read``)."""
    statements, commits = read(where, pids)
    return statements - before[0], commits - before[1]
