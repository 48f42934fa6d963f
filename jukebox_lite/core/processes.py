"""How the processes of a command end: together, and through the code paths that clean up.

A worker pool outlived a SIGKILLed `prepare` for minutes, still writing files; SIGTERM killed
Python without running a single `finally`. Here a worker asks the kernel to kill it when its parent
dies, and SIGTERM becomes the KeyboardInterrupt that Ctrl-C already raises, so both stop a command
through the same clean path (atomic writes discard their temporaries, the CLI says how to resume).
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Linux: the kernel sends this process SIGKILL when its parent dies, however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to ask for
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def stop_by_interrupt(signum: int, frame: object) -> None:
    """A signal handler: stop as Ctrl-C stops (KeyboardInterrupt), so every `finally` runs."""
    raise KeyboardInterrupt(signal.Signals(signum).name)
