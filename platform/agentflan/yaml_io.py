"""Reading a YAML file that must hold a mapping (a pipeline spec, a search space), refused in one line that
names the file when it is missing, is not YAML, or holds something else at the top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_mapping(path: str | Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The mapping at the top of ``path`` (empty for an empty file); ``what`` names the file in the error,
    raised as ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise error(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
    return loaded
