"""The limits a server meets, read from the kernel and made visible.

Every connection is a file descriptor, counted against RLIMIT_NOFILE (what
``ulimit -n`` shows); the listen backlog is clamped by net.core.somaxconn.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource

SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as far as allowed.

    Returns:
        The (soft, hard) limits in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # e.g. macOS caps at OPEN_MAX; keep what we have
    return fd_limits()


def fd_limits() -> tuple[int, int]:
    """The (soft, hard) RLIMIT_NOFILE now."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def somaxconn() -> int | None:
    """net.core.somaxconn, the kernel's ceiling on a listen backlog (None if unknown)."""
    try:
        with open(SOMAXCONN_PATH) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def clamp_backlog(requested: int) -> tuple[int, int | None]:
    """The backlog the kernel will really use.

    Returns:
        (effective backlog, the ceiling that clamped it or None if not clamped).
    """
    ceiling = somaxconn()
    if ceiling is not None and requested > ceiling:
        return ceiling, ceiling
    return requested, None


def open_fd_count() -> int | None:
    """Descriptors this process has open now (Linux /proc), or None.

    Linux 6.2 and later give the count as the size of /proc/self/fd (O(1));
    older kernels report 0 there, and the directory is listed instead
    (O(descriptors): 10 ms at 20,000).
    """
    try:
        count = os.stat("/proc/self/fd").st_size
        if count:
            return count
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir used
    except OSError:
        return None


#: glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks at least this large get pages of their own, returned to the system when freed.
MMAP_THRESHOLD_BYTES = 256 * 1024


def return_freed_memory() -> bool:
    """Make large buffers go back to the system when freed (glibc); True if done.

    glibc serves blocks above its mmap threshold with pages of their own and
    unmaps them on free, but it raises that threshold every time such a block
    is freed, up to 32 MiB. After a burst of large partial messages, the
    next ones then come from the heap, which fragments and keeps the memory
    long after the connections are gone. Fixing the threshold (which also
    fixes the trim threshold) keeps buffers of ``MMAP_THRESHOLD_BYTES`` and
    more on their own pages. Reads stay below it: the transport reads 64 KiB
    (why that matters: docs/benchmarks.md, "What the profile showed").
    Process-wide; harmless where there is no glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    ok &= mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES)
    return bool(ok)
