"""TUN devices and their addresses, with the kernel's ioctls (no ``ip`` command needed).

Theory of operation. Opening ``/dev/net/tun`` and ``TUNSETIFF`` with
``IFF_TUN | IFF_NO_PI`` makes a layer-3 device whose every outgoing IP packet
is one ``read`` of the descriptor and whose every ``write`` is one packet
received (linux Documentation/networking/tuntap.rst). The device is made in
the network namespace of the thread that *opened* the descriptor, and it is
not persistent: it vanishes when the descriptor closes, so a link killed
with ``kill -9`` leaves no device behind.

Addresses and flags are set the way ifconfig sets them, with ``SIOCSIF*``
ioctls on any socket of the namespace, each taking a ``struct ifreq``: the
interface name in 16 bytes, then a 24-byte union (linux/if.h).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

#: ``_IOW('T', 202, int)`` (linux/if_tun.h).
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
#: Socket ioctls (linux/sockios.h).
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCSIFMTU = 0x8922
SIOCSIFTXQLEN = 0x8943
#: Interface flags (linux/if.h).
IFF_UP = 0x1
IFF_RUNNING = 0x40
#: ``sizeof(struct ifreq)`` on Linux: IFNAMSIZ (16) + a 24-byte union.
IFREQ_BYTES = 40
IFNAMSIZ = 16
TUN_DEVICE = "/dev/net/tun"
#: /proc/net/dev: 8 receive counters, then transmit bytes, packets, errs, drop, ...
_TX_DROP_COLUMN = 11


def _ifreq(name: str, payload: bytes) -> bytes:
    return struct.pack(f"{IFNAMSIZ}s", name.encode()) + payload.ljust(IFREQ_BYTES - IFNAMSIZ, b"\0")


def _sockaddr_in(address: str) -> bytes:
    # sa_family is a native-endian unsigned short; the port (0) and address are big-endian.
    return struct.pack("=H2x4s8x", socket.AF_INET, socket.inet_aton(address))


def open_tun(name: str) -> int:
    """Make the TUN device ``name`` in this thread's network namespace.

    Returns:
        Its descriptor, non-blocking: each read is one IP packet, each write injects one.

    Raises:
        OSError: no /dev/net/tun (ENOENT), the tun module missing (ENODEV), no
            CAP_NET_ADMIN (EPERM), or a device of that name exists (EBUSY).
    """
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, struct.pack("=H", IFF_TUN | IFF_NO_PI)))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _set_up(sock: socket.socket, name: str) -> None:
    got = fcntl.ioctl(sock, SIOCGIFFLAGS, _ifreq(name, b""))
    (flags,) = struct.unpack_from("=H", got, IFNAMSIZ)
    fcntl.ioctl(sock, SIOCSIFFLAGS, _ifreq(name, struct.pack("=H", flags | IFF_UP | IFF_RUNNING)))


def configure(name: str, address: str, prefix_len: int, mtu: int, txqueuelen: int) -> None:
    """Bring up loopback, and give ``name`` its MTU, queue and ``address/prefix_len``, up.

    Runs in this thread's network namespace, like ``ip link set lo up; ip addr add
    ADDRESS/PREFIX dev NAME; ip link set NAME mtu MTU txqueuelen N up``.

    Raises:
        OSError: no such device, or no CAP_NET_ADMIN.
    """
    netmask = socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _set_up(sock, "lo")
        fcntl.ioctl(sock, SIOCSIFMTU, _ifreq(name, struct.pack("=i", mtu)))
        fcntl.ioctl(sock, SIOCSIFTXQLEN, _ifreq(name, struct.pack("=i", txqueuelen)))
        fcntl.ioctl(sock, SIOCSIFADDR, _ifreq(name, _sockaddr_in(address)))
        fcntl.ioctl(sock, SIOCSIFNETMASK, _ifreq(name, _sockaddr_in(netmask)))
        _set_up(sock, name)


def tx_dropped(name: str) -> int:
    """Packets the kernel dropped because the TUN ``name``'s queue was full (0 if no such
    device): what its reader did not take in time. Read in this thread's namespace."""
    with open("/proc/thread-self/net/dev") as table:
        for line in table:
            device, colon, counters = line.partition(":")
            if colon and device.strip() == name:
                return int(counters.split()[_TX_DROP_COLUMN])
    return 0
