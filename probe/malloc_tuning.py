"""glibc's malloc, told to give large blocks back: what keeps a streamed long sequence's peak
memory flat in the number of layers.

glibc serves a block above its mmap threshold with its own ``mmap`` and unmaps it on free.
The threshold is dynamic: freeing such a block raises it to that block's size (up to 32 MiB),
so after the first large tensor is freed, multi-MiB tensors (query blocks of scores, pieces
being written) come from the heap, which fragments and does not shrink. Measured with
``benchmarks/long_sequence.py`` (4,096 tokens, every key): the peak grew from 2.84x one layer's
pattern at 2 layers to 3.16x at 8; with the threshold fixed at 1 MiB it was 2.67x and 2.69x.

:func:`return_large_blocks` fixes the threshold for the process (which also ends glibc's
dynamic adjustment). It is called only when a batch is streamed layer by layer (batches
whose captured tensors exceed 256 MiB), where an ``mmap`` per large tensor costs nothing
next to the computation; ordinary batches keep glibc's defaults. Elsewhere than glibc it
does nothing. One job; imports nothing from probe.
"""

from __future__ import annotations

import ctypes

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
#: blocks of at least this many bytes are mmapped and returned to the system when freed
THRESHOLD = 1 << 20

_set = False


def return_large_blocks(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process (once); returns
    whether it is set (False where the C library has no ``mallopt``, e.g. macOS).

    >>> return_large_blocks() in (True, False)
    True
    """
    global _set
    if _set:
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _set = mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
    return _set


__all__ = ["M_MMAP_THRESHOLD", "THRESHOLD", "return_large_blocks"]
