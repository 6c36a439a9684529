"""The part of MySQL's dialect that SQLite lacks and that models (and AgentBench's gold SQL) rely on.

AgentBench runs the model's SQL on MySQL 8; we run it on SQLite. These gaps are closed here; the rest is
documented in docs/rollout.md ("AgentBench DB"):

* string literals: MySQL reads backslash escapes inside quotes (``'Don\\'t'``); SQLite does not;
* a TEXT column compared with a number: MySQL compares numbers, SQLite compares text (:func:`to_sqlite`);
* collation: MySQL 8's default ``utf8mb4_0900_ai_ci`` ignores case and accents in ``=``, ``ORDER BY``,
  ``GROUP BY`` and ``LIKE``; SQLite's ``BINARY`` does not. Columns are declared ``COLLATE mysql_ci``
  (:func:`mysql_fold`) and ``LIKE`` is replaced by a MySQL one (``\\`` escapes by default);
* functions: ``MD5``, ``CONCAT`` (NULL if any argument is), ``CONCAT_WS`` (skips NULLs) and ``IF``.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import unicodedata
from functools import lru_cache
from typing import Any

# MySQL's escape sequences inside a string literal (any other "\x" is "x"; "\%" and "\_" keep the backslash).
_ESCAPES = {
    "0": "\0",
    "'": "'",
    '"': '"',
    "b": "\b",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "Z": "\x1a",
    "\\": "\\",
}


_TOKEN = re.compile(
    r"""(?P<str>')
    |(?P<ident>`[^`]*`?|"(?:[^"\\]|\\.)*"?|\[[^\]]*\]?)
    |(?P<comment>--[^\n]*|/\*[\s\S]*?(?:\*/|$))
    |(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)
    |(?P<word>[A-Za-z_][\w$]*)
    |(?P<op><=|>=|<>|!=|==|=|<|>)
    |(?P<space>\s+)
    |(?P<other>.)""",
    re.X,
)
_OPS = {"<=", ">=", "<>", "!=", "==", "=", "<", ">"}


def _tokens(sql: str) -> list[tuple[str, str]]:
    """(kind, SQLite text) of each token; MySQL string literals come out in SQLite's form."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(sql):
        m = _TOKEN.match(sql, i)
        assert m is not None and m.lastgroup is not None  # "other" matches any character
        if m.lastgroup == "str":
            value, i = _read_literal(sql, i + 1)
            out.append(("str", "'" + value.replace("'", "''") + "'"))
            continue
        out.append((m.lastgroup, m.group()))
        i = m.end()
    return out


def _column_span(tokens: list[tuple[str, str]], end: int, columns: set[str]) -> int | None:
    """Start index of a column reference (``col``, `` `col` ``, ``t.col``) ending at ``end``, or None."""
    kind, text = tokens[end]
    name = text[1:-1] if kind == "ident" else text if kind == "word" else None
    if name is None or name.lower() not in columns:
        return None
    start = end
    if start >= 2 and tokens[start - 1] == ("other", ".") and tokens[start - 2][0] in ("word", "ident"):
        start -= 2
    return start


def _skip_space(tokens: list[tuple[str, str]], i: int, step: int) -> int:
    while 0 <= i < len(tokens) and tokens[i][0] in ("space", "comment"):
        i += step
    return i


def to_sqlite(sql: str, columns: list[str]) -> str:
    """A MySQL statement as SQLite should run it:

    * string literals with backslash escapes (``'Don\\'t'``) rewritten to SQLite's form (``'Don''t'``);
    * a comparison of one of the task's (TEXT) columns with a number (``Goal < 17``) compares numbers, as in
      MySQL, which converts the string to a double (its leading number, else 0); SQLite would compare the
      number as text (``'5' < '17'`` is false). The column becomes ``CAST(col AS REAL)``, which reads a
      string the same way.
    """
    tokens = _tokens(sql)
    names = {c.lower() for c in columns}
    wrap: list[tuple[int, int]] = []  # token spans [start, end] to wrap in CAST(... AS REAL)
    for k, (kind, text) in enumerate(tokens):
        if kind != "op" or text not in _OPS:
            continue
        left, right = _skip_space(tokens, k - 1, -1), _skip_space(tokens, k + 1, 1)
        if not (left >= 0 and right < len(tokens)):
            continue
        number_right = right
        if tokens[right] == ("other", "-"):
            number_right = _skip_space(tokens, right + 1, 1)
        if number_right < len(tokens) and tokens[number_right][0] == "num":
            start = _column_span(tokens, left, names)
            if start is not None:
                wrap.append((start, left))
                continue
        if tokens[left][0] == "num":
            end = right
            if (
                end + 2 < len(tokens)
                and tokens[end + 1] == ("other", ".")
                and tokens[end][0] in ("word", "ident")
            ):
                end += 2
            start = _column_span(tokens, end, names)
            if start is not None and start == right:
                wrap.append((right, end))
    parts = [text for _, text in tokens]
    for start, end in wrap:
        parts[start] = "CAST(" + parts[start]
        parts[end] = parts[end] + " AS REAL)"
    return "".join(parts)


def _read_literal(sql: str, i: int) -> tuple[str, int]:
    """The value of a MySQL '...' literal starting after its quote, and the index after its closing quote."""
    value: list[str] = []
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch == "\\" and i + 1 < n:
            nxt = sql[i + 1]
            value.append("\\" + nxt if nxt in "%_" else _ESCAPES.get(nxt, nxt))
            i += 2
        elif ch == "'" and sql.startswith("''", i):
            value.append("'")
            i += 2
        elif ch == "'":
            return "".join(value), i + 1
        else:
            value.append(ch)
            i += 1
    return "".join(value), n  # unterminated: SQLite will report the syntax error on the rewritten text


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _concat(*args: Any) -> str | None:
    return None if any(a is None for a in args) else "".join(_text(a) for a in args)


def _concat_ws(sep: Any, *args: Any) -> str | None:
    return None if sep is None else _text(sep).join(_text(a) for a in args if a is not None)


def _md5(value: Any) -> str | None:
    return None if value is None else hashlib.md5(_text(value).encode()).hexdigest()


def _if(cond: Any, then: Any, other: Any) -> Any:
    try:
        truth = bool(float(cond)) if isinstance(cond, (str, bytes)) else bool(cond)
    except ValueError:
        truth = False  # MySQL reads a non-numeric string as 0
    return then if truth else other


COLLATION = "mysql_ci"


def mysql_fold(text: str) -> str:
    """The comparison key of utf8mb4_0900_ai_ci, near enough: accents dropped, case folded, trailing spaces
    kept (NO PAD)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _collate(a: str, b: str) -> int:
    ka, kb = mysql_fold(a), mysql_fold(b)
    return (ka > kb) - (ka < kb)


@lru_cache(maxsize=256)
def _like_regex(pattern: str, escape: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == escape and i + 1 < len(pattern):
            out.append(re.escape(mysql_fold(pattern[i + 1])))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(mysql_fold(ch)))
        i += 1
    return re.compile("".join(out), re.S)


def _like(pattern: Any, value: Any, escape: Any = "\\") -> int | None:
    """``value LIKE pattern [ESCAPE escape]`` as MySQL reads it (SQLite calls like(pattern, value, escape))."""
    if pattern is None or value is None:
        return None
    regex = _like_regex(_text(pattern), _text(escape)[:1] if escape is not None else "\\")
    return int(regex.fullmatch(mysql_fold(_text(value))) is not None)


def install_mysql_functions(conn: sqlite3.Connection) -> None:
    conn.create_collation(COLLATION, _collate)
    conn.create_function("like", 2, _like, deterministic=True)
    conn.create_function("like", 3, _like, deterministic=True)
    conn.create_function("md5", 1, _md5, deterministic=True)
    conn.create_function("concat", -1, _concat, deterministic=True)
    conn.create_function("concat_ws", -1, _concat_ws, deterministic=True)
    conn.create_function("if", 3, _if, deterministic=True)
