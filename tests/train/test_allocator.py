"""keep_large_allocations: large tensors stop being served by fresh mmap pages (glibc only)."""

import subprocess
import sys

import pytest

SCRIPT = r"""
import ctypes, torch
from lmforge.train.allocator import keep_large_allocations

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mmapped_while_alive():
    t = torch.empty(40 << 20, dtype=torch.uint8)  # 40 MiB: above glibc's default threshold
    return libc.mallinfo2().hblkhd >= 40 << 20

print(mmapped_while_alive(), keep_large_allocations(), keep_large_allocations(),
      mmapped_while_alive())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_large_allocations_leave_mmap_after_the_call():
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("not glibc >= 2.33 (no mallinfo2)")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True", "True", "False"]
