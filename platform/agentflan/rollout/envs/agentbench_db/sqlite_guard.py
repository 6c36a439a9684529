"""One episode's database: AgentBench's table in a private in-memory SQLite, guarded against model-written SQL.

AgentBench builds each task's table in a throwaway MySQL database (``build_init_sql``: every column ``TEXT``,
every value inserted as text); here every column is ``TEXT COLLATE mysql_ci`` (MySQL's case- and
accent-insensitive comparisons, see ``mysql_compat``). Here the same table lives in ``sqlite3.connect(":memory:")``, one connection per
episode, so nothing is shared between episodes and nothing touches the disk.

The SQL comes from a model, so it is untrusted:

* an authorizer refuses ``ATTACH`` / ``DETACH`` (and with them ``VACUUM INTO``, which attaches its target),
  the ``load_extension`` function, and every ``PRAGMA`` but read-only schema introspection;
  ``SQLITE_LIMIT_ATTACHED`` is 0 as a second lock;
* a progress handler interrupts a statement that runs past ``timeout_s`` (a runaway recursive CTE);
* strings and blobs are capped by ``SQLITE_LIMIT_LENGTH`` and the result is read only as far as the
  800-character observation needs, so a huge result never sits in memory.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from typing import Any

from agentflan.rollout.envs.agentbench_db.mysql_compat import COLLATION, install_mysql_functions, to_sqlite

OBSERVATION_CHARS = 800  # AgentBench cuts a result at 800 characters and appends "[TRUNCATED]"
GROUP_CONCAT_MAX_LEN = 1024  # MySQL's default group_concat_max_len: answer_md5 hashes a truncated list
# Read-only schema introspection a model may reasonably ask for; every other PRAGMA is refused.
SAFE_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo"}
)
DENIED_FUNCTIONS = frozenset({"load_extension"})


class SqlGuardError(sqlite3.DatabaseError):
    """A statement the guard refused or stopped (reported to the model like any SQL error)."""


def _authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in SAFE_PRAGMAS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def table_columns(table: dict[str, Any]) -> list[str]:
    return [str(c["name"]) for c in table["table_info"]["columns"]]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class GuardedDatabase:
    """The tables of one task in a private in-memory SQLite, with the guards above."""

    def __init__(
        self, tables: list[dict[str, Any]], timeout_s: float = 10.0, max_value_bytes: int = 1_000_000
    ) -> None:
        self.tables = tables
        self.timeout_s = timeout_s
        self.columns = [c for t in tables for c in table_columns(t)]
        # check_same_thread=False: the loop may step an episode from a worker thread; one episode never steps
        # concurrently with itself. isolation_level=None: each statement commits, as AgentBench commits each.
        self.conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        install_mysql_functions(self.conn)
        for table in tables:
            self._create(table)
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_bytes)
        self.conn.set_authorizer(_authorizer)
        self._deadline = float("inf")  # set before each statement; our own setup runs uncapped
        self.conn.set_progress_handler(self._progress, 10_000)

    def _create(self, table: dict[str, Any]) -> None:
        """AgentBench's build_init_sql: ``CREATE TABLE `name` (`col` TEXT, ...)`` and the rows as text."""
        name, columns = str(table["table_name"]), table_columns(table)
        cols = ", ".join(f"{quote_ident(c)} TEXT COLLATE {COLLATION}" for c in columns)
        self.conn.execute(f"CREATE TABLE {quote_ident(name)} ({cols})")
        marks = ", ".join("?" * len(columns))
        rows = [tuple(None if v is None else str(v) for v in row) for row in table["table_info"]["rows"]]
        self.conn.executemany(f"INSERT INTO {quote_ident(name)} VALUES ({marks})", rows)

    def _progress(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def execute(self, sql: str) -> str:
        """Run one model statement and render it as AgentBench's observation: ``str(rows)`` of the result,
        cut at 800 characters (+ ``[TRUNCATED]``), or the error text. Never raises for bad SQL."""
        self._deadline = time.monotonic() + self.timeout_s
        try:
            cursor = self.conn.execute(to_sqlite(sql, self.columns))
            text = _render_rows(cursor)
        except sqlite3.OperationalError as e:
            if str(e) == "interrupted":
                text = f"Error: SQL execution timed out after {self.timeout_s:g} seconds"
            else:
                text = str(e)
        except (sqlite3.Error, OverflowError, ValueError) as e:  # bad SQL, over-long values, bad parameters
            text = str(e)
        if self.conn.in_transaction:  # a model's explicit BEGIN: AgentBench commits after each statement
            self.conn.execute("COMMIT")
        return text

    def table_hash(self, table: dict[str, Any]) -> str | None:
        """AgentBench's answer_md5 of one table, replicated over SQLite::

            select md5(group_concat(rowhash order by rowhash)) as hash
            from (SELECT substring(MD5(CONCAT_WS(',', `c1`, `c2`, ...)), 1, 5) AS rowhash FROM `t`) as sub;

        CONCAT_WS skips NULLs; MySQL's group_concat joins with ',' and stops at group_concat_max_len (1024)
        bytes; md5 of no rows is NULL. None when the table or a column is gone (MySQL: an error string)."""
        name, columns = str(table["table_name"]), table_columns(table)
        select = ", ".join(quote_ident(c) for c in columns)
        # Capped too: the model may have replaced the table by a view that never ends.
        self._deadline = time.monotonic() + self.timeout_s
        try:
            rows = self.conn.execute(f"SELECT {select} FROM {quote_ident(name)}").fetchall()
        except sqlite3.Error:
            return None
        hashes = sorted(hashlib.md5(_concat_ws(row).encode()).hexdigest()[:5] for row in rows)
        if not hashes:
            return None
        joined = ",".join(hashes).encode()[:GROUP_CONCAT_MAX_LEN]
        return hashlib.md5(joined).hexdigest()

    def tables_hash(self) -> str | None:
        """AgentBench's calculate_tables_hash: the tables' hashes sorted and joined by '_' (one table: its hash)."""
        hashes = [self.table_hash(t) for t in self.tables]
        if any(h is None for h in hashes):
            return None
        return "_".join(sorted(h for h in hashes if h is not None))

    def close(self) -> None:
        self.conn.close()


def _mysql_text(value: Any) -> str:
    """How MySQL would print a stored value inside CONCAT_WS (values are TEXT; a REAL written by SQLite
    arithmetic keeps SQLite's rendering, see docs/rollout.md)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _concat_ws(row: tuple[Any, ...]) -> str:
    return ",".join(_mysql_text(v) for v in row if v is not None)


def _render_rows(cursor: sqlite3.Cursor) -> str:
    """``str(cursor.fetchall())`` cut at 800 characters, reading only as many rows as that needs."""
    if cursor.description is None:  # INSERT / UPDATE / DDL: AgentBench renders the empty result, "[]"
        return "[]"
    text = "["
    while len(text) <= OBSERVATION_CHARS:
        row = cursor.fetchone()
        if row is None:
            text += "]"
            break
        text += ("" if text == "[" else ", ") + repr(tuple(row))
    if len(text) > OBSERVATION_CHARS:
        return text[:OBSERVATION_CHARS] + "[TRUNCATED]"
    return text
