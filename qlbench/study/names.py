"""Names that become folders or shell words — study, model and dataset keys of config.yaml, and mask values — are
checked before anything is written or run: a name is one plain path component (letters, digits, `_ . + -`, at
most 100 characters, no `..`), so no config value can write outside the results and resources folders or reach a
shell as anything but one word."""

from __future__ import annotations

import re

from qlbench.errors import QlbenchError

MAX_LEN = 100  # well under a filesystem's 255 bytes per component, with room for the temporary names beside it
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check(kind: str, name) -> str:
    """`name` if it is a safe single path component; else a one-line QlbenchError naming `kind` and the problem."""
    shown = repr(name) if len(str(name)) <= 60 else repr(str(name)[:60]) + "..."
    if not isinstance(name, str) or not name:
        raise QlbenchError(f"{kind} {shown}: must be a non-empty name")
    if len(name) > MAX_LEN:
        raise QlbenchError(f"{kind} {shown}: {len(name)} characters; at most {MAX_LEN}")
    if ".." in name or "/" in name or "\\" in name:
        raise QlbenchError(f"{kind} {shown}: a name, not a path (no '/', '\\' or '..')")
    if not _SAFE.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9_.+-]", c)}) or [name[0]]
        raise QlbenchError(f"{kind} {shown}: {''.join(bad)!r} not allowed; use letters, digits and _ . + - "
                           "(starting with a letter or digit)")
    return name


def check_config(config: dict) -> None:
    """Every study, model and dataset key of a config (each names folders: results/<study>, .../cells/<model>,
    resources/models/<model>)."""
    for section, kind in (("studies", "study"), ("models", "model"), ("datasets", "dataset")):
        for key in config.get(section) or {}:
            check(f"{section}: {kind}", key)
