"""One writer per run: a lock file beside the run, held with an OS lock for the writer's life.

SWMR mode, which keeps a run consistent on disk, also lets HDF5 drop its own file lock, so
HDF5 alone does not stop a second writer (a ``--resume`` started while the first capture
still writes). Every writer (new run, resumed run, combined run) therefore takes
``RUN.h5.lock`` first: ``fcntl.flock(LOCK_EX | LOCK_NB)`` on that file, held open until the
writer closes. The file holds JSON naming the holder (pid, host, start time) for the error a
second writer gets. The OS drops the lock when its process dies, however it dies, so a lock
file left by a killed writer is stale and simply taken over; a clean close removes it.

Imports :mod:`probe.errors`.

>>> import os, tempfile
>>> run = os.path.join(tempfile.mkdtemp(), "run.h5")
>>> with WriterLock(run):
...     os.path.exists(run + ".lock")
True
>>> os.path.exists(run + ".lock")
False
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket

from .errors import ProbeError


class RunLockedError(ProbeError):
    """Another process is writing the run."""


def lock_path(run_path) -> str:
    return os.fspath(run_path) + ".lock"


def holder(run_path) -> dict | None:
    """What the lock file of ``run_path`` says about its holder (None if absent or unreadable)."""
    try:
        with open(lock_path(run_path), encoding="utf-8") as fh:
            info = json.load(fh)
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def locked_error(run_path, *, hdf5: bool = False) -> RunLockedError:
    """The error a second writer gets, naming the holder when the lock file says who it is.
    ``hdf5``: HDF5's own file lock refused us (the lock file, if ours, names no one else)."""
    name = os.fspath(run_path)
    info = holder(run_path)
    if info and not (hdf5 and info.get("pid") == os.getpid()):
        who = (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} "
               f"since {info.get('since', '?')}")
    elif hdf5:
        who = "another process (it holds HDF5's lock on the file; no probe lock file names it)"
    else:
        who = "another process (its lock file does not say which yet)"
    return RunLockedError(f"{name} is being written by {who}; wait for it to finish or stop "
                          f"it, then retry (a second writer would corrupt the run)")


class WriterLock:
    """The exclusive writer lock of one run; a context manager, or :meth:`acquire` and
    :meth:`release`. Raises :class:`RunLockedError` when another process holds it."""

    def __init__(self, run_path):
        self.run_path = os.fspath(run_path)
        self.path = lock_path(run_path)
        self.fd: int | None = None

    def acquire(self) -> WriterLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise ProbeError(f"cannot open the writer lock {self.path} ({err.strerror}); "
                                 "probe writes a run only with its lock: check the folder's "
                                 "permissions") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise locked_error(self.run_path) from None
            except BaseException:
                os.close(fd)
                raise
            # the previous holder may have closed, removing the file, between our open and
            # flock: then we hold a lock on a deleted file; start again on the one at the path
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        # ours now; whatever is in it was left by a writer that died (a stale lock)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "run": os.path.basename(self.run_path)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order, so no one takes over a
        file that is about to disappear)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
