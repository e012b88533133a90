"""Atomic file writes: a reader (or a re-run after a kill) never sees a half-written file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from hybridcxr.errors import InputError, OutputError


_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})  # no space, over quota
_UMASK = os.umask(0)
os.umask(_UMASK)


def _raise_if_full(err: OSError, path: Path) -> None:
    """Turn "no space left" (or over quota) into an OutputError naming the file; other errors pass."""
    if err.errno in _FULL:
        raise OutputError(path, f"cannot be written: the disk is full ({os.strerror(err.errno)}); nothing was "
                                "half-written: free some space and run again") from err


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The temporary name keeps ``path``'s suffix (so writers that choose a format by extension work) and
    starts with a dot (so dataset globs such as ultralytics' ``*.*`` skip it). On error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or path.suffix, dir=path.parent)
    except OSError as err:
        _raise_if_full(err, path)
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        if Path(tmp).is_file():  # mkstemp makes 0600; give the file the mode a plain open() would
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        _raise_if_full(err, path)
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (indented, keys in insertion order)."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_csv(path: str | Path, table: pd.DataFrame) -> Path:
    """Write a table as CSV atomically, without the index."""
    return write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))


def read_json_or_none(path: str | Path) -> Any | None:
    """Read a JSON file, or None where it is absent or unreadable (e.g. from an older, killed run)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a file, read in 1 MiB blocks: weights files are tens of MB."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_model_card(path: str | Path, kind: str, name: str) -> dict[str, Any]:
    """A model card: the JSON object at ``path`` whose ``kind`` is ``kind``; InputError naming the file for a
    missing, unreadable or foreign one (``name`` says what the card should be, e.g. "fusion head")."""
    path = Path(path)
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, f"missing: no {name} card here") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(path, f"not readable JSON, not a valid {name} card ({str(err)[:200]})") from None
    if not isinstance(card, dict) or card.get("kind") != kind:
        raise InputError(path, f"not a {name} card (expected kind {kind!r})")
    return card
