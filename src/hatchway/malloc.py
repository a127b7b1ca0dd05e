"""Keep glibc from handing a bulk copy's buffers back to the kernel after every frame.

Every process on the byte path (proxy, server, agent) allocates and frees buffers of 32 KiB to
4 MiB per frame it relays. glibc's malloc serves requests above its mmap threshold with a fresh
mmap and gives the heap's top back to the kernel above its trim threshold; both thresholds start
low (128 KiB) and move with what the process frees, so depending on how its heap happened to be
laid out a process could end up mapping, faulting in and unmapping its buffers for every frame.
That made the built-in agent's downloads bimodal: 3.7-4.0 CPU-seconds per GiB instead of 2.2 in
five of seven benchmark runs (py-spy showed the time in websockets' ``Frame.serialize``, where the
big buffers are first written). Fixed thresholds keep such buffers in the heap: the same three
runs with them were all fast, and the proxy's CPU per GiB dropped by a tenth.
"""

from __future__ import annotations

#: mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Above any frame (the WebSocket layers' maximum message is 4 MiB).
MMAP_THRESHOLD = 4 * 1024 * 1024
#: Free memory a process keeps at the top of its heap before returning it to the kernel.
TRIM_THRESHOLD = 32 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Set fixed malloc thresholds; best effort (False where the C library is not glibc)."""
    import ctypes  # here: the proxy calls this off its start-up path

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
