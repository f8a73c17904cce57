"""Writing while capturing: the background writer thread that bounds the batches in flight,
the graceful stop on SIGINT/SIGTERM at a batch boundary, and when a batch is streamed layer
by layer instead (long sequences).

Imports :mod:`probe.store` (the writer it drives) and :mod:`probe.errors`; never the runner.
"""

from __future__ import annotations

import os
import queue
import threading

import torch

from .errors import ProbeError
from .store import RunWriter


class Interrupted(ProbeError):
    """A capture stopped on SIGINT or SIGTERM at a batch boundary; the file is resumable."""

    def __init__(self, path, committed: int, signum: int):
        super().__init__(f"interrupted; committed {committed} examples; rerun with --resume")
        self.path, self.committed, self.signum = os.fspath(path), committed, signum


#: graceful stop: while a capture writes, a signal handler (the CLI's) calls :func:`request_stop`
#: and the capture stops before its next batch, so no signal lands inside an HDF5 write
_STOP = {"active": 0, "signum": None}


def request_stop(signum: int) -> bool:
    """Ask a running :func:`capture_to_file` to stop at its next batch boundary. Returns False
    when no capture is writing (the caller should then stop the program its own way)."""
    if not _STOP["active"]:
        return False
    _STOP["signum"] = signum
    return True


def check_stop(out, writer) -> None:
    if _STOP["signum"] is not None:
        raise Interrupted(out, writer.n_done, _STOP["signum"])


#: ``stream="auto"`` streams layer by layer a batch whose captured tensors would exceed this
STREAM_ABOVE_BYTES = 256 << 20
STREAM_MODES = ("auto", "batch", "layer")


def streams_layers(stream: str, writer: RunWriter, n_rows: int, width: int) -> bool:
    """Whether a batch of ``n_rows`` rows padded to ``width`` tokens is written layer by layer
    (see :func:`capture_to_file`'s ``stream``); float32 in memory is assumed."""
    if stream != "auto":
        return stream == "layer"
    return writer.values_per_batch(n_rows, width) * 4 > STREAM_ABOVE_BYTES


class BackgroundWriter(threading.Thread):
    """Writes captured batches in the background so packing and disk I/O overlap the next
    forward pass.

    At most ``depth`` batches exist at once, counted from before their forward pass until
    they are written (:meth:`reserve` takes a slot, the writer frees it). Bounding the batches
    in flight, not the queue, is what keeps memory flat in N: with a bounded queue, a run that
    outpaces the disk (a long run, once the page cache is full of dirty pages) held the queue
    full, one batch in the writer and one more blocked in ``put``: two batches more than a
    short run, whose writer keeps up (benchmarks/memory.py).
    """

    def __init__(self, writer: RunWriter, depth: int):
        super().__init__(name="probe-writer", daemon=True)
        self.writer = writer
        self.queue: queue.Queue = queue.Queue()
        self.slots = threading.Semaphore(max(int(depth), 1))
        self.error: BaseException | None = None

    def run(self):
        # one intra-op thread here (the setting is per thread): a second full OpenMP team
        # would oversubscribe the cores the forward pass is using
        torch.set_num_threads(1)
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                if self.error is None:
                    rows, batch = item
                    # packing (one cast-and-gather copy per row and key, by torch, which
                    # releases the GIL) runs here, in parallel with the next forward pass
                    self.writer.append(rows, batch)
            except BaseException as err:  # surfaced in the main thread
                self.error = err
            finally:
                item = rows = batch = None  # the batch's arrays go before its slot does
                self.slots.release()
                self.queue.task_done()

    def reserve(self):
        """Wait for a free slot before the next forward pass (see the class docstring)."""
        while not self.slots.acquire(timeout=0.5):
            if self.error is not None or not self.is_alive():
                break
        if self.error is not None:
            raise self.error

    def put(self, rows):
        if self.error is not None:
            raise self.error
        self.queue.put(rows)

    def wait(self):
        """Return once every queued batch is written (raises the writer's error, if any)."""
        self.queue.join()
        if self.error is not None:
            raise self.error

    def stop(self):
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def drain(background) -> None:
    """Let the writer thread write what is queued, then stop it (errors are kept on it)."""
    if background.is_alive():
        try:
            background.stop()
        except BaseException:
            pass
