"""The mlperf.conf compiled into the installed LoadGen: the exact text a run used, and the rules it sets.

Since LoadGen 4.1.7 mlperf.conf is embedded in the extension module; LoadGen also embeds the
sha1 of every source file it was built from, mlperf.conf included, and writes that list to
every detail log. So the text is read from the binary and checked against LoadGen's own
sha1: what lands in a submission is what the run was held to, not a copy that may differ.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from ..errors import InputError

_FIRST_LINE = b"# The format of this config file is 'key = value'."
_SHA1_ENTRY = re.compile(rb"([0-9a-f]{40}) /mlperf\.conf\b")


def _module_path() -> Path:
    import mlperf_loadgen

    return Path(mlperf_loadgen.__file__)


@lru_cache(maxsize=1)
def embedded() -> tuple[str, str]:
    """(mlperf.conf text, its sha1) from the installed LoadGen."""
    path = _module_path()
    data = path.read_bytes()
    start = data.find(_FIRST_LINE)
    listed = _SHA1_ENTRY.search(data)
    if start < 0 or listed is None:
        raise InputError(f"{path}: no embedded mlperf.conf (LoadGen older than 4.1.7?)")
    end = data.find(b"\0", start)
    text = data[start:end]
    digest = hashlib.sha1(text).hexdigest()
    if digest != listed.group(1).decode():
        raise InputError(
            f"{path}: the embedded mlperf.conf does not match LoadGen's own sha1 {listed.group(1).decode()}"
        )
    return text.decode(), digest


def parse(text: str) -> dict[tuple[str, str, str], str]:
    """(model, scenario, key) -> value; '*' stays a wildcard."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" not in line:
            continue
        lhs, value = (p.strip() for p in line.split("=", 1))
        parts = lhs.split(".")
        if len(parts) == 3:
            out[(parts[0], parts[1], parts[2])] = value
    return out


def settings(model: str, scenario: str, text: str | None = None) -> dict[str, str]:
    """The keys mlperf.conf gives one model and scenario, most specific wins (as LoadGen applies them)."""
    table = parse(text if text is not None else embedded()[0])
    out: dict[str, str] = {}
    for m, s in (("*", "*"), ("*", scenario), (model, "*"), (model, scenario)):
        out.update({k: v for (tm, ts, k), v in table.items() if (tm, ts) == (m, s)})
    return out
