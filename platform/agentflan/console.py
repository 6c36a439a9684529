"""The console a job shows: one progress bar per stage and the summary tables. Everything else (Ray, Ray Data,
DeepSpeed, MLflow, transformers, warnings, C++ logs of child processes) goes to ``<output_dir>/logs/``.

:func:`job_console` sets this up around a CLI command:

- the terminal's stdout and stderr are kept for the console; file descriptors 1 and 2 of the process are
  pointed at ``logs/agentflan.log``, so whatever a library or a child process (Ray's raylet, workers started
  from here) writes lands in the log, not between our tables;
- Python logging and warnings go to the same file; ``logs/ray`` links Ray's session logs (workers, raylet);
- a failure prints one line naming what went wrong and where the full log is (the traceback is in the log).

When the streams are not real file descriptors (pytest's capture) only the Python-level redirection happens.

Progress (:class:`Console.count`) uses tqdm: a bar redrawn in place on a terminal; in a CI log (not a TTY)
one plain line every 15 s or so, and a last one when the stage ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

LOG_NAME = "agentflan.log"
_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): (.+)$")


class _Lines:
    """A file wrapper for tqdm off a terminal: each redraw becomes one line (no carriage returns)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class Console:
    """What the user sees. ``message`` is a status line (stderr), ``print`` a result (stdout), ``count`` moves
    the progress bar of a stage; every one of them is copied into the log."""

    def __init__(self, out: IO[str], err: IO[str], log: IO[str] | None = None, log_path: Path | None = None):
        self.out, self.err, self.log, self.log_path = out, err, log, log_path
        self.tty = bool(getattr(err, "isatty", lambda: False)())
        self._bars: dict[str, Any] = {}
        self._finished: set[str] = set()  # stages whose bar reached its total: later counts are late echoes

    def __call__(self, message: str) -> None:  # a plain progress callback: Console works as one
        self.message(message)

    def message(self, text: str) -> None:
        self._close_bars()
        line = f"[agentflan {time.strftime('%H:%M:%S')}] {text}"
        print(line, file=self.err, flush=True)
        self._log(line)

    def print(self, text: str = "") -> None:
        self._close_bars()
        print(text, file=self.out, flush=True)
        self._log(text)

    def count(self, stage: str, done: int, total: int | None = None, unit: str = "it", **info: Any) -> None:
        """Stage ``stage`` has done ``done`` of ``total`` ``unit``s; ``info`` is shown beside the bar."""
        from tqdm import tqdm

        if stage in self._finished:
            return
        bar = self._bars.get(stage)
        if bar is None:
            for other in list(self._bars):
                self._close(other)
            bar = tqdm(
                total=total,
                desc=stage,
                unit=f" {unit}",
                file=self.err if self.tty else _Lines(self.err),
                mininterval=0.5 if self.tty else 15.0,
                dynamic_ncols=self.tty,
                ncols=None if self.tty else 100,
                ascii=not self.tty,
                leave=True,
            )
            self._bars[stage] = bar
        if total is not None and bar.total != total:
            bar.total = total
        if info:
            bar.set_postfix(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()}, refresh=False
            )
        bar.update(max(0, min(done, total if total is not None else done) - bar.n))
        if total is not None and done >= total:
            self._close(stage)
            self._finished.add(stage)

    def error(self, text: str) -> None:
        """A problem the user can fix, in one line."""
        self._close_bars()
        print(f"agentflan: {text}", file=self.err, flush=True)
        self._log(f"agentflan: {text}")

    def fail(self, exc: BaseException, what: str) -> None:
        """One line: what failed, the root cause, and where the full log is; the traceback goes to the log."""
        self._close_bars()
        self._log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        where = f" (full log: {self.log_path})" if self.log_path else ""
        print(f"agentflan: {what} failed: {one_line(exc)}{where}", file=self.err, flush=True)

    def _close(self, stage: str) -> None:
        bar = self._bars.pop(stage, None)
        if bar is not None:
            bar.close()
            self._log(f"{stage}: {bar.n}{'/' + str(bar.total) if bar.total else ''} done")

    def _close_bars(self) -> None:
        for stage in list(self._bars):
            self._close(stage)

    def _log(self, text: str) -> None:
        if self.log is not None:
            self.log.write(text + "\n")
            self.log.flush()


def count(
    progress: Callable[[str], None], stage: str, done: int, total: int | None = None, **kw: Any
) -> None:
    """Move ``progress``'s bar if it has one (a :class:`Console`); plain callbacks only take messages."""
    fn = getattr(progress, "count", None)
    if fn is not None:
        fn(stage, done, total, **kw)


def one_line(exc: BaseException) -> str:
    """The root cause of ``exc`` in one line: for an error that wraps a worker's traceback (Ray), the last
    ``SomethingError: message`` line in it; else the innermost cause's type and first line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc)
    found = [m for line in text.splitlines() if (m := _ERROR_LINE.match(line))]
    if found:
        name, message = found[-1].groups()
        return f"{name}: {message.strip()}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextlib.contextmanager
def job_console(output_dir: str | Path) -> Iterator[Console]:
    """Route everything but the console to ``<output_dir>/logs/agentflan.log`` for the duration."""
    logs = Path(output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / LOG_NAME
    log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in finally
    log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
    saved_fds: list[tuple[int, int]] = []
    saved_streams = (sys.stdout, sys.stderr)
    out, err = sys.stdout, sys.stderr
    env = {k: os.environ.get(k) for k in _QUIET_ENV}
    handlers: list[tuple[logging.StreamHandler, Any]] = []
    console = None
    try:
        if _real_fd(sys.stdout, 1) and _real_fd(sys.stderr, 2):
            sys.stdout.flush()
            sys.stderr.flush()
            out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
            err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
            for fd in (1, 2):
                saved_fds.append((fd, os.dup(fd)))
                os.dup2(log.fileno(), fd)
        sys.stdout = sys.stderr = log
        handlers = _route_logging(log)
        os.environ.update(_QUIET_ENV)
        console = Console(out, err, log, log_path)
        yield console
    finally:
        if console is not None:
            console._close_bars()
        _link_ray_logs(logs)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.stdout, sys.stderr = saved_streams
        _unroute_logging(handlers, log)
        for fd, saved in saved_fds:
            os.dup2(saved, fd)
            os.close(saved)
        if out is not saved_streams[0]:
            out.close()
            err.close()
        log.close()


# Libraries' own progress bars and banners would land in the log as noise: switch them off there.
_QUIET_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def _real_fd(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()]
    loggers += [v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)]
    found = {
        id(h): h
        for lg in loggers
        for h in lg.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    }
    return list(found.values())  # once each: a handler may hang on several loggers


_ADDED = object()  # marks the root handler _route_logging added (to remove, not restore)


def _to_console(h: logging.StreamHandler) -> bool:
    """A handler writing to the terminal (stdout/stderr), as opposed to one that owns its own file (torch's
    trace handler) or follows sys.stderr by itself (logging's last resort)."""
    if isinstance(getattr(type(h), "stream", None), property):
        return False
    stream = h.stream
    if stream is None:
        return False
    if stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        return True
    try:
        return stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):
        return False


def _route_logging(log: IO[str]) -> list[tuple[logging.StreamHandler, Any]]:
    """Point every stream handler (root, Ray, DeepSpeed, transformers, MLflow...) and warnings at the log."""
    logging.captureWarnings(True)
    changed: list[tuple[logging.StreamHandler, Any]] = []
    for h in _stream_handlers():
        if _to_console(h):
            changed.append((h, h.stream))
            h.stream = log  # not setStream: it flushes the old stream, which may be closed
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(log)
        root.addHandler(handler)
        changed.append((handler, _ADDED))
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
    except Exception:  # Ray Data not imported or another version: its bars are in the log at worst
        pass
    return changed


def _unroute_logging(changed: list[tuple[logging.StreamHandler, Any]], log: IO[str]) -> None:
    """Undo :func:`_route_logging`; handlers libraries created during the job (pointing at the log, which
    is about to close) go to stderr."""
    root = logging.getLogger()
    for handler, previous in reversed(changed):
        if previous is _ADDED:
            root.removeHandler(handler)
        else:
            handler.stream = previous
    for h in _stream_handlers():
        if not isinstance(getattr(type(h), "stream", None), property) and h.stream is log:
            h.stream = sys.stderr
    logging.captureWarnings(False)


def _link_ray_logs(logs: Path) -> None:
    """``logs/ray`` -> this session's Ray log folder (raylet, workers), when Ray ran here."""
    try:
        import ray

        if not ray.is_initialized():
            return
        session = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    except Exception:
        return
    link = logs / "ray"
    with contextlib.suppress(OSError):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(session)
