"""One writer per stage folder: a second command writing the same folder is refused, naming the first.

Two `prepare` runs on one RUN once both succeeded and listed every file twice. A lock file is held
with flock(2) while the command runs, and holds the holder's pid, command and start time for the
message the second command prints. The kernel drops the lock when its holder exits
in any way (SIGKILL too), so a lock left by a dead run is recognised as stale by construction: the
next command takes it and says whose it was.

The lock file sits beside the folder (RUN/.data.lock for RUN/data), so a command refused before any
work leaves no empty folder behind, and it is never deleted (deleting a lock file others may have open
would let two holders in).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator

from jukebox_lite.core.errors import UserError

log = logging.getLogger(__name__)

RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")  # torchrun, MPICH (Hydra), Open MPI


def launch_rank() -> int:
    """This process's rank in a torchrun or mpiexec launch (0 when launched alone): only rank 0 locks."""
    return next((int(os.environ[name]) for name in RANK_VARS if os.environ.get(name, "").isdigit()), 0)


@contextlib.contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[None]:
    """Hold the lock of `folder` for the block, or raise a UserError naming whoever holds it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.parent / f".{folder.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.read(fd, 300).decode("utf-8", "replace").strip()[:200] or "another process"
            raise UserError(
                f"'{folder}' is being written by {holder}; wait for it to end or stop it (one command per folder at a time)."
            ) from None
        previous = os.read(fd, 300).decode("utf-8", "replace").strip()[:200]
        if previous:
            log.info("took over the lock of %s from %s, which is gone", folder, previous)
        since = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({command}, since {since})".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean end leaves no holder's name behind
    finally:
        os.close(fd)  # closing drops the flock
