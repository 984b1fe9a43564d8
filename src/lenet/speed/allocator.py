"""glibc's malloc, set to keep freed memory for reuse on the CPU.

Above its mmap threshold (128 KB at start, raised only as big blocks are freed)
glibc serves each block with fresh pages from the kernel and hands them back on
free, so every step's multi-megabyte activations cost thousands of page faults.
Pinning the threshold at glibc's maximum and keeping freed memory serves them from
the heap instead (docs/speed.md). Results are unchanged: only where memory comes from.
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD = 32 << 20  # bytes: glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 256 << 20  # bytes of freed heap kept for reuse before returning any
_tuned: str | None = None


def tune_cpu_allocator() -> str:
    """Set glibc's malloc as described above, once per process. Returns what was done,
    for environment.json."""
    global _tuned
    if _tuned is None:
        _tuned = "unchanged (not glibc)"
        try:
            libc = ctypes.CDLL(None)
            mallopt = libc.mallopt
            gnu = libc.gnu_get_libc_version
        except (OSError, AttributeError):
            return _tuned
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        if mallopt(m_mmap_threshold, MMAP_THRESHOLD) and mallopt(m_trim_threshold, TRIM_THRESHOLD):
            gnu.restype = ctypes.c_char_p
            _tuned = (f"glibc {gnu().decode()}: mmap threshold {MMAP_THRESHOLD >> 20} MB, "
                      f"trim threshold {TRIM_THRESHOLD >> 20} MB")
    return _tuned


def allocator_tuned() -> bool:
    return not tune_cpu_allocator().startswith("unchanged")
