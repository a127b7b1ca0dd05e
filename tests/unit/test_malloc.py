"""hatchway.malloc: big buffers stay in the heap (glibc, as on Debian); another libc is survived."""

from __future__ import annotations

import ctypes
import subprocess
import sys

from hatchway import malloc


def _mapped_by_a_big_malloc(tuned: bool) -> int:
    """Bytes glibc mmaps for one 1 MiB malloc, in a fresh interpreter (mallopt cannot be read back)."""
    probe = (
        "import ctypes\n"
        "from hatchway.malloc import keep_large_buffers\n"
        f"assert keep_large_buffers() is True if {tuned} else True\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.malloc.argtypes = [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "class Info(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',\n"
        "                                          'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
        "libc.mallinfo2.restype = Info\n"
        "before = libc.mallinfo2().hblkhd\n"
        "p = libc.malloc(1 << 20)\n"
        "print(libc.mallinfo2().hblkhd - before)\n"
        "libc.free(p)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return int(out)


def test_big_buffers_come_from_the_heap_once_tuned() -> None:
    assert _mapped_by_a_big_malloc(tuned=False) >= 1 << 20  # glibc's default: a mapping of its own
    assert _mapped_by_a_big_malloc(tuned=True) == 0


def test_a_c_library_without_mallopt_is_not_an_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    class NoMallopt:
        def __init__(self, _name: object) -> None:
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert malloc.keep_large_buffers() is False
