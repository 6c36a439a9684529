"""CI's proof that the suite reads nothing outside the clone: an audit hook in every Python process.

``.ci/run`` puts this folder on ``PYTHONPATH``, so every Python process of the suite imports it at start-up: the
pytest process, the ``agentflan`` subprocesses the tests start, and the Ray workers (they inherit the driver's
environment). ``AGENTFLAN_FORBID_READS`` lists folders (``os.pathsep``-separated) that no process may open a file
in or list; CI names the ``shared/`` beside the clone, where a development machine keeps the full data. An
attempt raises ``PermissionError`` naming the path (the test fails where it reads) and is appended to
``AGENTFLAN_FORBID_READS_LOG``, which ``.ci/run`` checks is empty afterwards, so that a read some code caught and
ignored still fails CI.
"""

from __future__ import annotations

import os
import sys

_FORBIDDEN = tuple(
    os.path.join(os.path.abspath(p), "") for p in os.environ.get("AGENTFLAN_FORBID_READS", "").split(os.pathsep) if p
)
_LOG = os.environ.get("AGENTFLAN_FORBID_READS_LOG")
_EVENTS = {"open", "os.listdir", "os.scandir"}


def _forbidden(path: object) -> str | None:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):  # a file descriptor, None (os.listdir()), a path-like already resolved
        path = os.fspath(path) if isinstance(path, os.PathLike) else None
    if not path:
        return None
    full = os.path.join(os.path.abspath(path), "")
    return path if full.startswith(_FORBIDDEN) else None


def _hook(event: str, args: tuple) -> None:
    if event not in _EVENTS or not args:
        return
    path = _forbidden(args[0])
    if path is None:
        return
    message = f"read outside the clone: {path} (pid {os.getpid()}); tests read tests/data/real"
    if _LOG:
        with open(_LOG, "a") as f:  # the log lies outside the forbidden folders: no recursion
            f.write(message + "\n")
    raise PermissionError(message)


if _FORBIDDEN:
    sys.addaudithook(_hook)
