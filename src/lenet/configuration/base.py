"""What every config section shares: strictness, and errors that name the field."""

from __future__ import annotations

import difflib
import json
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError


class Strict(BaseModel):
    """A config section: unknown keys are errors, and so are bad values set later."""

    # allow_inf_nan=False: an infinite weight decay or a NaN learning rate is no setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _fields_at(root: Any, loc: tuple[Any, ...]) -> list[str]:
    """Valid field names at a location of a pydantic model (for did-you-mean); list
    indices in ``loc`` (variants.3.name) and Optional/list annotations are stepped through."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        entry = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if entry is None:
            return []
        model = entry.annotation
        while not hasattr(model, "model_fields") and typing.get_args(model):
            model = next((a for a in typing.get_args(model) if hasattr(a, "model_fields")
                          or typing.get_args(a)), None)
    return list(getattr(model, "model_fields", {}))


def explain(error: ValidationError, source: str, root: Any) -> ConfigError:
    """A pydantic error as one message per field, with did-you-mean for typos.
    ``root``: the model validated, whose fields the hints name."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        dotted = ".".join(str(p) for p in loc)
        if item["type"] == "extra_forbidden":
            valid = _fields_at(root, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else ""
            lines.append(f"unknown key {dotted!r}{hint} (valid here: {', '.join(valid)})")
        else:
            value = item.get("input")
            message = item["msg"].removeprefix("Value error, ")
            if isinstance(value, dict):  # a whole-section check: the message names the fields
                lines.append(f"{dotted or '(top level)'}: {message}")
            else:
                lines.append(f"{dotted} = {_short_json(value)}: {message}")
    return ConfigError(f"invalid {source}:\n  " + "\n  ".join(lines))


def _short_json(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."

