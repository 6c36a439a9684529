"""Generate the config reference (docs/config.md) from the config model itself.

    python -m agentflan.config_doc > docs/config.md

A test fails when docs/config.md differs from what this prints, so the reference cannot go stale.
"""

from __future__ import annotations

import json
import re
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from agentflan.config import Config


def _type_name(annotation: object) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or re.sub(r"agentflan\.config\.(\w+\.)?", "", str(annotation).replace("typing.", ""))


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    return json.dumps(value)


def _sections(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    out = [(prefix, model)]
    for name, field in model.model_fields.items():
        for candidate in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                out += _sections(candidate, f"{prefix}.{name}" if prefix else name)
    return out


def config_reference() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from `agentflan.config.Config` by `python -m agentflan.config_doc`; do not edit by hand.",
        "Every key can be set in a spec YAML or overridden on the command line as `key=value`.",
    ]
    for prefix, model in _sections(Config, ""):
        lines += ["", f"## `{prefix or '(top level)'}`", ""]
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        if doc and model is not Config:
            lines += [doc, ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}" if prefix else name
            desc = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | `{_type_name(field.annotation)}` | `{_default(field)}` | {desc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
