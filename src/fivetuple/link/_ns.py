"""Network namespaces from Python 3.11: ``unshare``, ``setns`` and ``prctl`` through ctypes.

Theory of operation. ``os.unshare`` and ``os.setns`` arrive in Python 3.12;
on 3.11 the libc calls are reached with ctypes. Both act on the calling
thread only, and the link's process has one thread, so "the thread" is "the
process" here.

A namespace made with ``unshare(CLONE_NEWNET)`` has no name in ``ip netns``
(that is a bind mount under /run/netns, which outlives a ``kill -9``): it
lives exactly as long as something refers to it, a process inside it or an
open descriptor of ``/proc/.../ns/net``. The link keeps one such descriptor
per side, so the namespaces die with the link's process, however it dies.
``processes_in`` finds what else still holds one (what ``ip netns pids``
does for a named namespace).
"""

from __future__ import annotations

import ctypes
import os

#: ``unshare``/``setns`` flag of a network namespace (linux/sched.h).
CLONE_NEWNET = 0x40000000
#: ``prctl`` option: the signal sent to us when our parent thread dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
#: The calling thread's network namespace.
OWN_NAMESPACE = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _checked(result: int, call: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{call}: {os.strerror(errno)}")


def unshare_net() -> None:
    """Move this thread into a new, empty network namespace.

    Raises:
        OSError: EPERM without CAP_SYS_ADMIN.
    """
    _checked(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def setns_net(fd: int) -> None:
    """Move this thread into the network namespace that ``fd`` refers to.

    Raises:
        OSError: EPERM without CAP_SYS_ADMIN, EINVAL if ``fd`` is not a network namespace.
    """
    _checked(_libc.setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")


def open_own_namespace() -> int:
    """A descriptor of this thread's network namespace (it keeps the namespace alive)."""
    return os.open(OWN_NAMESPACE, os.O_RDONLY | os.O_CLOEXEC)


def die_with_parent(signum: int) -> None:
    """Have the kernel send ``signum`` to this process when its parent thread dies.

    Survives ``execve`` (except of a set-user-ID or file-capability program).
    """
    _checked(_libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def namespace_id(fd: int) -> tuple[int, int]:
    """(device, inode) of the namespace ``fd`` refers to: equal ids, the same namespace."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def processes_in(ns: tuple[int, int]) -> list[int]:
    """Pids of the processes whose network namespace is ``ns`` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # gone, or a kernel thread
            continue
        if (st.st_dev, st.st_ino) == ns:
            found.append(int(entry))
    return found
