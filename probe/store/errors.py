"""The store's exceptions, and what to do when the operating system refuses a write.

One job: name what went wrong with a run file (schema, safety, shards, damage, a failed
write) and keep a failed write from crashing the interpreter (:func:`detach`). Shared by the
writer and by ``combine``. Imports h5py and :mod:`probe.errors`, nothing from the other
store modules.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback

import h5py

from ..errors import ProbeError


class SchemaError(ProbeError):
    """The file is not a probe run of a schema version this code reads."""


class UnsafeRunError(SchemaError):
    """The file links to data outside itself (or outside its folder), which probe never writes."""


class ShardError(ProbeError):
    """A combined run's shard files are missing or are not the ones it was combined from."""


class CorruptRunError(SchemaError):
    """Stored data fails its checksum or the index contradicts itself (a damaged file)."""


class NotTriangularError(ProbeError):
    """A key stored as a lower triangle (a causal layer's scores or pattern) holds a value
    above its diagonal that the triangle would lose; nothing of that batch is committed."""


class WriteFailedError(ProbeError):
    """The operating system refused a write to a run file; ``committed`` rows are safe on disk."""

    def __init__(self, message: str, path: str, committed: int | None, cause=None):
        super().__init__(message)
        self.path, self.committed, self.cause = path, committed, cause


class DiskFullError(WriteFailedError):
    """The disk (or quota) filled up while writing a run."""


def is_disk_full(err: BaseException) -> bool:
    """Whether an error from h5py or the OS means 'no space left' (ENOSPC, EDQUOT). HDF5 folds
    the OS error into its message (``file write failed: ... errno = 28``), so both are read.

    >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    True
    """
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return any(s in text for s in ("No space left", "Disk quota exceeded", "errno = 28",
                                   f"errno = {errno.EDQUOT}"))


def is_write_failure(err: BaseException) -> bool:
    """An OS-level write failure reported by h5py (disk full, I/O error): the file handle can
    no longer be flushed, so it must be detached (:func:`detach`) before it is closed."""
    return isinstance(err, (OSError, RuntimeError)) and (
        is_disk_full(err) or "file write failed" in str(err) or "write request failed" in str(err))


def write_failed(err: BaseException, path, committed: int | None, *, removed: bool = False,
                 resume_hint: bool = True):
    """The project error for a failed write of ``path``: one line, no HDF5 error stack.
    ``removed``: the partial output was deleted (nothing to resume)."""
    if removed:
        done = "nothing was written (the partial file was removed)"
    elif committed is None:
        done = "the committed examples are kept"
    else:
        done = f"committed {committed} examples"
    again = "rerun with --resume" if resume_hint else "run the command again"
    if is_disk_full(err):
        return DiskFullError(f"disk full while writing {path}; {done}; free space and {again}",
                             os.fspath(path), committed, err)
    reason = getattr(err, "strerror", None) or str(err).split("(")[0].strip() or type(err).__name__
    return WriteFailedError(f"write failed while writing {path} ({reason}); {done}; fix the "
                            f"disk and {again}", os.fspath(path), committed, err)


def detach(f: h5py.File) -> None:
    """Point HDF5's file descriptor at an anonymous in-memory file, so that closing a file whose
    writes fail (disk full) neither raises nor crashes.

    Measured here (h5py 3.16, HDF5 2.0): after a write fails with ENOSPC, every later flush
    fails too; ``close`` then raises, h5py's deallocators print a traceback per object, and the
    interpreter segfaults at exit while HDF5 retries the flush. With the descriptor swapped,
    what HDF5 still writes goes to memory and is dropped; the file on disk stays exactly as
    the failed write left it: consistent (SWMR writes metadata in dependency order), every
    committed row intact, ready for ``--resume``.
    """
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # not the sec2 driver, or already closed: nothing to swap
        return
    if not isinstance(fd, int) or fd < 0:
        return
    try:
        sink = os.memfd_create("probe-discard") if hasattr(os, "memfd_create") else \
            os.open(os.devnull, os.O_RDWR)
    except OSError:
        sink = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(sink, fd)
    finally:
        os.close(sink)


@contextlib.contextmanager
def quiet_failed_closes():
    """Silence h5py's 'Exception ignored in ObjectID.__dealloc__' for write failures.

    When a write fails inside h5py's own (Cython) code, e.g. ``create_dataset(data=...)``
    on a full disk, h5py drops the objects it made before the error reaches us, and their
    close (which flushes) fails and is printed as a traceback. Only those are swallowed; any
    other unraisable error goes to the previous hook."""
    previous, previous_except = sys.unraisablehook, sys.excepthook

    def hook(unraisable):
        if not (is_write_failure(unraisable.exc_value)
                and "dealloc" in str(getattr(unraisable, "err_msg", "") or "") + repr(unraisable.object)):
            previous(unraisable)

    def excepthook(kind, value, tb):  # Cython prints the full traceback through this first
        if not (is_write_failure(value) and "_dealloc" in repr(traceback.extract_tb(tb))):
            previous_except(kind, value, tb)

    sys.unraisablehook, sys.excepthook = hook, excepthook
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = previous, previous_except


def close_after_failure(f: h5py.File) -> None:
    """Close ``f`` after a failed write: detach it, then close, never raising."""
    if not f.id.valid:
        return
    detach(f)
    try:
        f.close()
    except Exception:
        pass


def close_or_detach(f, err: BaseException) -> bool:
    """Close ``f`` after ``err`` interrupted writing it: detached first when ``err`` is a
    refused write. Returns whether it was one (the caller then raises :func:`write_failed`)."""
    failure = is_write_failure(err)
    if f is not None and failure:
        close_after_failure(f)
    elif f is not None and f.id.valid:
        f.close()
    return failure


class RefusedWrites:
    """A writer's guard against writes the OS refuses (a full disk, an I/O error).

    Inside ``with guard:`` such a write detaches the file (:func:`detach`) and raises
    :func:`write_failed`'s error, with ``committed()`` rows kept; after it, :meth:`check`
    refuses every further write until the writer is closed (:meth:`close`) and the run
    resumed. Other errors pass unchanged.
    """

    def __init__(self, f: h5py.File, path: str, committed):
        self.f, self.path, self._committed = f, path, committed
        self.failed: BaseException | None = None

    def check(self) -> None:
        if self.failed is not None:
            raise ProbeError(f"{self.path}: an earlier write failed; close this writer and "
                             "resume the run")

    def __enter__(self) -> RefusedWrites:
        return self

    def __exit__(self, kind, err, tb) -> bool:
        if isinstance(err, (OSError, RuntimeError)) and is_write_failure(err):
            raise self._fail(err) from None
        return False

    def _fail(self, err: BaseException):
        """Remember ``err``, detach the file and return the error to raise. The row count on
        disk is read back after close (a failed commit flush may or may not have landed)."""
        self.failed = err
        detach(self.f)
        return write_failed(err, self.path, self._committed())

    def close(self, committed_on_disk) -> None:
        """Close the file; after a refused write (or one refused by the closing flush) it is
        detached first, and the latter raises with ``committed_on_disk(path)`` rows kept."""
        if self.failed is not None:
            close_after_failure(self.f)
        elif self.f.id.valid:
            try:
                self.f.close()
            except (OSError, RuntimeError) as err:  # the closing flush hit a full disk
                if not is_write_failure(err):
                    raise
                self._fail(err)
                close_after_failure(self.f)
                raise write_failed(err, self.path, committed_on_disk(self.path)) from None
