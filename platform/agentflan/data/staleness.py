"""Input files stamped by size and modification time, so a corpus built from them knows when they changed.

``agentflan train``/``run``/``tune`` skip the data stage when a corpus is already under ``output_dir``
(:func:`agentflan.data.pipeline.corpus_staleness`). The corpus is reused only if it was built from the same data
config and seed *and* from the same input files: the manifest records each local input file's size and mtime
(``input_files``, from :func:`input_stamps`), and a file that changed since (edited, replaced, grown, gone) makes
the corpus stale (:func:`changed_input`). Sizes and mtimes, not a content hash: hashing every input to decide
whether to read it would cost a good part of the data stage on a large corpus, and an edit changes the mtime.
Inputs that are not local files (a hub dataset id, a ``scheme://`` URL) cannot be checked so and are trusted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

Stamp = dict[str, int]


def input_stamps(paths: Iterable[str]) -> dict[str, Stamp | None]:
    """Size and mtime (ns) of each local file, keyed by absolute path; ``None`` for one that is gone."""
    stamps: dict[str, Stamp | None] = {}
    for p in paths:
        if "://" in p:
            continue
        path = str(Path(p).resolve())
        try:
            st = os.stat(path)
        except OSError:
            stamps[path] = None
            continue
        stamps[path] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return stamps


def changed_input(recorded: dict[str, Stamp | None], now: dict[str, Stamp | None]) -> str | None:
    """The first input that differs between two stampings, with how: one line; ``None`` if none does."""
    for path in sorted(set(recorded) | set(now)):
        before, after = recorded.get(path), now.get(path)
        if before == after:
            continue
        if before is None:
            how = "a new input" if after else "missing"
        elif after is None:
            how = "gone"
        elif before["size"] != after["size"]:
            how = f"size {before['size']} -> {after['size']} bytes"
        else:
            how = "modified"
        return f"{path} changed since the corpus was built ({how})"
    return None
