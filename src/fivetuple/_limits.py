"""The limits a server meets, read from the kernel and made visible.

Every connection is a file descriptor, counted against RLIMIT_NOFILE (what
``ulimit -n`` shows); the listen backlog is clamped by net.core.somaxconn.
"""

from __future__ import annotations

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
    """Descriptors this process has open now (Linux /proc), or None."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir used
    except OSError:
        return None
