"""Write files so that a crash, a kill or a full disk never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator

from jukebox_lite.core.errors import UserError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temporary file lives in the same folder (same filesystem, so the rename is atomic) and keeps
    the suffix, so writers that pick a format from the extension still work. On any error it is
    removed and whatever was at `path` before is untouched; a full disk becomes one UserError, whoever
    the writer was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # libsndfile's errors and torch's zip writer's are RuntimeErrors
        if _disk_is_full(tmp, e):
            raise UserError(
                f"The disk is full: '{path}' could not be written (what was there before is intact); free some space and rerun."
            ) from None
        raise
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def _disk_is_full(tmp: Path, error: BaseException) -> bool:
    """Did a write fail for lack of space? An OSError says so in its errno; libsndfile ("System error")
    and torch's zip writer do not, so the disk is asked: does it take 64 KiB more in that file?"""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        with open(tmp, "ab") as f:  # the temporary, deleted right after
            f.write(bytes(1 << 16))
            f.flush()
            os.fsync(f.fileno())
    except OSError as probe:
        return probe.errno in (errno.ENOSPC, errno.EDQUOT)
    return False


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete the temporaries of `atomic_path` below `folder` whose writing process no longer exists.

    A SIGKILL skips every cleanup, so the next run does it; a live writer's file is left alone.
    """
    for tmp in Path(folder).rglob(".*.tmp*"):
        match = re.search(r"\.tmp(\d+)(\.[^.]+)?$", tmp.name)
        if match is None or not tmp.is_file():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:  # its writer is gone
            log.info("removing %s, left by an interrupted run", tmp)
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            pass


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and flush it to disk, so a killed run keeps every line it reported."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a file written by `append_line`, cutting off a last line torn by a killed run.

    Without the cut, the next appended line would be glued onto the torn one and both would be lost.
    Any other line that is not a JSON object (a damaged disk, a hand edit) is refused, naming its line.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(raw))
    rows = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            reason = e.reason if isinstance(e, UnicodeDecodeError) else e.msg
            raise UserError(f"'{path}' line {number} is damaged ({reason}); restore the file or delete that line.") from None
        if not isinstance(row, dict):
            raise UserError(f"'{path}' line {number} is not a JSON object; restore the file or delete that line.")
        rows.append(row)
    return rows


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
