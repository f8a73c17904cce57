"""return_large_blocks: after glibc raised its mmap threshold (a large block was freed), a
4 MiB block comes from the heap; once the threshold is fixed at 1 MiB, a new large block is
mmapped again (and so given back when freed). Run in a fresh process: the setting is
process-wide."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

_CHILD = r"""
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("malloc_tuning", sys.argv[1])  # not probe's torch
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
return_large_blocks = module.return_large_blocks

libc = ctypes.CDLL(None)
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mmapped_while_held(size):
    before = libc.mallinfo2().hblkhd
    p = libc.malloc(size)
    grew = libc.mallinfo2().hblkhd - before
    libc.free(p)
    return grew >= size

libc.free(libc.malloc(16 << 20))  # a freed 16 MiB block raises the dynamic threshold
# 8 MiB: more than the heap has free after the 4 MiB block, so glibc must ask the system
print(mmapped_while_held(4 << 20), return_large_blocks(), mmapped_while_held(8 << 20))
"""


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc (mallopt, mallinfo2)")
def test_large_blocks_are_mmapped_again_once_the_threshold_is_fixed():
    from probe import malloc_tuning

    out = subprocess.run([sys.executable, "-c", _CHILD, malloc_tuning.__file__],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"], out
