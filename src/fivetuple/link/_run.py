"""``fivetuple link`` and ``fivetuple link run``: set up, forward, clean up; join.

Theory of operation. The link's process makes everything itself, on its one
thread, and holds every piece by a descriptor, so that its death, even by
``kill -9``, is the cleanup:

1. It binds the abstract Unix socket of its name (``_control``): the lock
   that refuses a second link of that name, and the door ``link run`` knocks
   on. The kernel releases it when the process ends.
2. For each side, it ``unshare``s a new network namespace, keeps a
   descriptor of it, opens a TUN device there (a TUN is made in the
   namespace of the thread that opens it), sets loopback up and the TUN's
   address, MTU and up flag with ioctls, and ``setns``es back to where it
   started. The namespaces have no bind mount (``ip netns`` does not list
   them), so nothing outlives the process but what runs inside them; the
   TUN devices are not persistent, so they vanish with their descriptors.
3. It forwards on a ``Loop`` (``_forward``), prints one ready line on
   stdout, and, given ``-- CMD``, starts CMD inside namespace a with
   ``PR_SET_PDEATHSIG`` set to SIGKILL, watched through a pidfd: CMD's exit
   ends the link with CMD's status, and the link's death ends CMD.
4. On SIGINT, SIGTERM or SIGHUP it stops: first CMD (SIGTERM, then SIGKILL
   after ``STOP_GRACE_S`` while packets still flow, so that CMD can close
   its connections), then the loop. Processes still inside its namespaces
   (started with ``link run``) get SIGTERM, then SIGKILL after
   ``STRAGGLER_GRACE_S``: without the link their namespace is a network
   with nowhere to go. Then it closes its descriptors and prints a one-line
   summary on stderr.

``link run`` asks the running link for the namespace's descriptor, enters it
with ``setns`` and ``exec``s CMD, so CMD's pid, signals and exit status are
its own. ``setns`` is called through ctypes (``_ns``) rather than by running
``nsenter``: no util-linux dependency, no extra process, and a missing
command or a link that is not running is our one line and exit 2 rather than
nsenter's message and status 127.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import NoReturn

from .._loop import Loop
from .._poller import READ
from ..errors import SetupError
from ..netsim import LinkConfig
from ._control import SIDES, ControlServer, join
from ._forward import Forwarder
from ._ns import (
    die_with_parent,
    namespace_id,
    open_own_namespace,
    processes_in,
    setns_net,
    unshare_net,
)
from ._tun import TUN_DEVICE, configure, open_tun, tx_dropped

#: The addresses of sides a and b, on one /24.
A_ADDRESS = "10.77.0.1"
B_ADDRESS = "10.77.0.2"
PREFIX_LEN = 24
#: The TUN device's name inside each namespace.
TUN_NAME = "ftlink"
TUN_MTU = 1500
#: Packets each TUN queues for the forwarder (as Ethernet's default; a TUN's is 500):
#: slack for when the forwarder's core is busy elsewhere for a few milliseconds.
TUN_TXQUEUELEN = 1000
#: How long CMD has to exit after SIGTERM before SIGKILL.
STOP_GRACE_S = 5.0
#: How long processes left inside the namespaces have to exit after SIGTERM.
STRAGGLER_GRACE_S = 2.0
DEFAULT_NAME = "default"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Capability bits (linux/capability.h).
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def ready_line(name: str) -> str:
    """The one line a running link prints on stdout."""
    return (
        f"link {name}: a={A_ADDRESS} b={B_ADDRESS} "
        f"(fivetuple link run{_name_flag(name)} a|b -- CMD)"
    )


def _name_flag(name: str) -> str:
    return "" if name == DEFAULT_NAME else f" --name {name}"


def check_name(name: str) -> None:
    """Raises SetupError unless ``name`` is 1 to 64 of letters, digits, ``_.-``."""
    if not NAME_PATTERN.fullmatch(name):
        raise SetupError(
            f"--name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-', e.g. --name test1"
        )


def check_privileges() -> None:
    """Raises SetupError unless this process has CAP_SYS_ADMIN and CAP_NET_ADMIN."""
    effective = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
    needed = 1 << CAP_SYS_ADMIN | 1 << CAP_NET_ADMIN
    if (effective & needed) != needed:
        raise _privilege_error()


def _privilege_error() -> SetupError:
    return SetupError(
        "fivetuple link needs root: it makes network namespaces and TUN devices "
        "(CAP_SYS_ADMIN and CAP_NET_ADMIN); run it with sudo"
    )


def check_command(command: list[str]) -> None:
    """Raises SetupError unless ``command[0]`` is a program that can be run."""
    if shutil.which(command[0]) is None:
        raise SetupError(
            f"{command[0]!r}: no such command; give a program on PATH or the path to one"
        )


def _tun_error(why: str) -> SetupError:
    return SetupError(
        f"cannot open {TUN_DEVICE} ({why}): load the tun module (modprobe tun), "
        f"or give the container the device (docker run --device {TUN_DEVICE} --cap-add NET_ADMIN)"
    )


@dataclass(slots=True)
class _Side:
    """One namespace of the link: a descriptor of it and its TUN."""

    label: str
    address: str
    ns_fd: int
    tun_fd: int

    def close(self) -> None:
        os.close(self.tun_fd)  # the device goes with it
        os.close(self.ns_fd)


def _make_side(host_ns: int, label: str, address: str) -> _Side:
    """A new namespace with its TUN, made from (and returning to) ``host_ns``."""
    try:
        unshare_net()
    except OSError:
        raise _privilege_error() from None
    try:
        ns_fd = open_own_namespace()
        try:
            try:
                tun_fd = open_tun(TUN_NAME)
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EACCES):
                    raise _privilege_error() from None
                raise _tun_error(exc.strerror or str(exc)) from None
            try:
                configure(TUN_NAME, address, PREFIX_LEN, TUN_MTU, TUN_TXQUEUELEN)
            except BaseException as exc:
                os.close(tun_fd)
                if isinstance(exc, OSError):
                    raise SetupError(
                        f"cannot give {TUN_NAME} in namespace {label} its address "
                        f"{address}/{PREFIX_LEN} ({exc.strerror}): is this a Linux kernel with IPv4?"
                    ) from None
                raise
        except BaseException:
            os.close(ns_fd)
            raise
    finally:
        setns_net(host_ns)
    return _Side(label, address, ns_fd, tun_fd)


def _make_sides() -> list[_Side]:
    host_ns = open_own_namespace()
    sides: list[_Side] = []
    try:
        for label, address in zip(SIDES, (A_ADDRESS, B_ADDRESS), strict=True):
            sides.append(_make_side(host_ns, label, address))
    except BaseException:
        for side in sides:
            side.close()
        raise
    finally:
        os.close(host_ns)
    return sides


class _Command:
    """CMD of ``fivetuple link -- CMD``, in namespace a; its exit stops the loop."""

    __slots__ = ("_loop", "_pidfd", "proc")

    def __init__(self, loop: Loop, command: list[str], ns_fd: int) -> None:
        parent = os.getpid()

        def enter_namespace() -> None:  # in the child, between fork and exec
            die_with_parent(signal.SIGKILL)
            if os.getppid() != parent:  # the link died before the line above
                os._exit(1)
            setns_net(ns_fd)

        self._loop = loop
        try:
            self.proc = subprocess.Popen(command, preexec_fn=enter_namespace)
        except OSError as exc:
            raise SetupError(f"cannot run {command[0]!r}: {exc.strerror}") from None
        except subprocess.SubprocessError as exc:  # enter_namespace failed
            raise SetupError(f"cannot start {command[0]!r} in namespace a: {exc}") from None
        # A pidfd is readable once the process has exited: one more descriptor on the loop.
        self._pidfd = os.pidfd_open(self.proc.pid)
        loop.add_io(self._pidfd, self, READ)

    def handle_io(self, events: int) -> None:
        """CMD exited: reap it and stop the link (the loop calls this)."""
        self.proc.wait()
        self._loop.remove_io(self._pidfd)
        self._loop.stop()

    @property
    def running(self) -> bool:
        """True until CMD has exited."""
        return self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM now, SIGKILL after ``STOP_GRACE_S`` if it is still there."""
        if self.running:
            self.proc.terminate()
            self._loop.call_later(STOP_GRACE_S, self.kill)

    def kill(self) -> None:
        """SIGKILL, if it is still running."""
        if self.running:
            self.proc.kill()

    def status(self) -> int:
        """CMD's exit status as a shell reports it (128 + N when killed by signal N)."""
        code = self.proc.wait()
        return code if code >= 0 else 128 - code

    def close(self) -> None:
        """Kill CMD if still running, reap it, release the pidfd."""
        self.kill()
        self.proc.wait()
        self._loop.remove_io(self._pidfd)
        os.close(self._pidfd)


class _Stopper:
    """What a stop signal does: stop CMD first if there is one (a second signal kills it)."""

    __slots__ = ("_loop", "command", "signals")

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self.command: _Command | None = None
        self.signals = 0

    def __call__(self) -> None:
        self.signals += 1
        command = self.command
        if command is None or not command.running:
            self._loop.stop()
        elif self.signals == 1:
            command.terminate()
        else:
            command.kill()


def _stop_stragglers(name: str, sides: list[_Side]) -> None:
    """SIGTERM, then SIGKILL, every process still inside the link's namespaces."""
    namespaces = [namespace_id(side.ns_fd) for side in sides]

    def inside() -> list[int]:
        me = os.getpid()
        return [pid for ns in namespaces for pid in processes_in(ns) if pid != me]

    stragglers = inside()
    if not stragglers:
        return
    print(
        f"link {name}: stopping {len(stragglers)} processes left in its namespaces",
        file=sys.stderr,
        flush=True,
    )
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in stragglers:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STRAGGLER_GRACE_S
        while stragglers and time.monotonic() < deadline:
            time.sleep(0.02)
            stragglers = inside()
        if not stragglers:
            return


def run_link(name: str, config: LinkConfig, seed: int, command: list[str] | None) -> int:
    """Make the link, print its ready line, forward until a stop signal or CMD's exit.

    Args:
        name: the link's name (``link run --name``).
        config: netsim's model, applied each way.
        seed: the seed of both directions' random choices.
        command: run in namespace a; its exit ends the link. None: run until a signal.

    Returns:
        The exit status: CMD's, or 0 after a stop signal.

    Raises:
        SetupError: a bad name, no privileges, no TUN device, a link of that
            name already running, or CMD not found. Nothing is left behind.
    """
    check_name(name)
    if command is not None:
        check_command(command)
    check_privileges()
    if not os.path.exists(TUN_DEVICE):
        raise _tun_error("there is no such file")
    control = ControlServer(name)
    try:
        sides = _make_sides()
        try:
            loop = Loop()
            try:
                status, summary = _serve(loop, name, control, sides, config, seed, command)
            finally:
                loop.close()
        finally:
            _stop_stragglers(name, sides)
            for side in sides:
                side.close()
    finally:
        control.close()
    print(summary, file=sys.stderr, flush=True)
    return status


def _serve(
    loop: Loop,
    name: str,
    control: ControlServer,
    sides: list[_Side],
    config: LinkConfig,
    seed: int,
    command: list[str] | None,
) -> tuple[int, str]:
    """Forward until stopped; returns (exit status, the summary line)."""
    side_a, side_b = sides
    control.offer(
        {"name": name, "pid": os.getpid(), "a": A_ADDRESS, "b": B_ADDRESS},
        [side.ns_fd for side in sides],
    )
    loop.add_io(control.sock.fileno(), control, READ)
    forwarder = Forwarder(loop, side_a.tun_fd, side_b.tun_fd, config, seed)
    stopper = _Stopper(loop)
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stopper)
    try:
        print(ready_line(name), flush=True)
        if command is not None:
            stopper.command = _Command(loop, command, side_a.ns_fd)
        loop.run()
    finally:
        if stopper.command is not None:
            stopper.command.close()
        forwarder.close()
        loop.remove_io(control.sock.fileno())
    for side, direction in zip(sides, forwarder.directions, strict=True):
        direction.tun_drops = _tun_drops(side)
    a_to_b, b_to_a = forwarder.statistics()
    summary = f"link {name} (seed {seed}): {a_to_b.summary()} | {b_to_a.summary()}"
    return (0 if stopper.command is None else stopper.command.status()), summary


def _tun_drops(side: _Side) -> int:
    """What ``side``'s kernel dropped on its TUN's full queue, read inside its namespace."""
    host_ns = open_own_namespace()
    try:
        setns_net(side.ns_fd)
        try:
            return tx_dropped(TUN_NAME)
        finally:
            setns_net(host_ns)
    except OSError:
        return 0
    finally:
        os.close(host_ns)


def run_in(name: str, side: str, command: list[str]) -> NoReturn:
    """``fivetuple link run``: exec ``command`` inside ``side`` of the running link ``name``.

    Raises:
        SetupError: a bad name or side, no privileges, no such command, or no
            link of that name running. On success it does not return: this
            process becomes ``command``.
    """
    check_name(name)
    if side not in SIDES:
        raise SetupError(f"side {side!r}: a link has sides a and b")
    check_command(command)
    check_privileges()
    _, fds = join(name)
    try:
        setns_net(fds[SIDES.index(side)])
    except OSError:
        raise _privilege_error() from None
    finally:
        for fd in fds:
            os.close(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    # Python ignores these, and exec keeps what is ignored; CMD expects the
    # defaults (``CMD | head`` must end CMD), as subprocess's restore_signals gives.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        raise SetupError(f"cannot run {command[0]!r}: {exc.strerror}") from None
