"""Reading a JSON input the round did not write itself: one line naming the file when it is bad."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError


def read_json(path: Path, missing: str = "missing") -> object:
    """The parsed file; a missing or malformed one is an InputError naming it (`missing` says why it may be absent)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: {missing}") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON (line {err.lineno})") from None


def write_json_atomic(path: Path, data) -> None:
    """`data` as JSON at `path`, replacing what was there only once the whole file is written."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
