"""Write files so that a crash, a kill or a full disk never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temporary file lives in the same folder (same filesystem, so the rename is atomic) and keeps
    the suffix, so writers that pick a format from the extension still work. On any error it is
    removed and whatever was at `path` before is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and flush it to disk, so a killed run keeps every line it reported."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a file written by `append_line`, cutting off a last line torn by a killed run.

    Without the cut, the next appended line would be glued onto the torn one and both would be lost.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(raw))
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
