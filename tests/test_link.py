"""``fivetuple link``: netsim's link model between two network namespaces (issue 16).

The forwarder's core is tested first on datagram socketpairs standing in for
TUN devices (each read one packet, as a TUN's; no root needed). Then the
command itself, as root, on real namespaces and the kernel's own TCP: a
transfer over 5% loss arrives whole and the kernel retransmits; the round
trip is twice the delay; and whatever way the link ends (Ctrl-C, ``kill -9``
of it or of its command), nothing it made is left: no namespace (no process
and no descriptor refers to it), no TUN device, no process.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fivetuple._loop import Loop
from fivetuple._poller import READ
from fivetuple.link import A_ADDRESS, B_ADDRESS, READ_BATCH, TUN_NAME, Forwarder, ready_line
from fivetuple.netsim import Link, LinkConfig
from helpers import child_pids, run_cli, wait_for


def _why_no_real_link() -> str:
    """Why the tests of real namespaces cannot run here ("" if they can)."""
    if os.geteuid() != 0:
        return "fivetuple link needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun (the tun module) here"
    if shutil.which("ip") is None or shutil.which("nstat") is None:
        return "the checks read the kernel with iproute2's ip and nstat"
    return ""


real_link = pytest.mark.skipif(bool(_why_no_real_link()), reason=_why_no_real_link())

#: Bytes of the TCP transfer over the lossy link (a few MB).
TRANSFER_BYTES = 4 * 1024 * 1024
DELAY_MS = 20.0

# -- the forwarder's core, on socketpairs ------------------------------------------


@contextmanager
def forwarder_on_socketpairs(
    config: LinkConfig, seed: int
) -> Iterator[tuple[Loop, Forwarder, socket.socket, socket.socket]]:
    """A Forwarder between two datagram socketpairs; yields (loop, forwarder, a, b):
    what is sent on ``a`` enters side a's "TUN", what side b's receives comes out of ``b``."""
    loop = Loop()
    a_out, a_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b_out, b_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (a_in, b_in, b_out):
        sock.setblocking(False)
    forwarder = Forwarder(loop, a_in.fileno(), b_in.fileno(), config, seed)
    try:
        yield loop, forwarder, a_out, b_out
    finally:
        forwarder.close()
        loop.close()
        for sock in (a_out, a_in, b_out, b_in):
            sock.close()


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on a non-blocking socket."""
    got = []
    while True:
        try:
            got.append(sock.recv(65536))
        except BlockingIOError:
            return got


def test_the_forwarder_gives_each_packet_the_fate_netsim_gives_it() -> None:
    config = LinkConfig(loss=0.2, duplicate=0.1)
    packets = [bytes([i % 256]) * (60 + i) for i in range(300)]
    model = Link(config, seed="5:a_to_b")  # the seed Forwarder derives for a->b, as netsim.Path
    expected = []
    for packet in packets:
        model.send(packet, 0.0)
        expected += model.deliver(0.0)
    with forwarder_on_socketpairs(config, seed=5) as (loop, forwarder, a, b):
        received = []
        for packet in packets:
            a.send(packet)
            for _ in range(3):  # read and arm; the arrival timer; spare
                loop.run_once(0)
            received += drain(b)
        a_to_b, b_to_a = forwarder.statistics()
    assert received == expected
    assert a_to_b.packets == len(packets) and a_to_b.bytes == sum(map(len, packets))
    assert a_to_b.written == len(expected)
    assert a_to_b.link.lost_random == model.lost_random > 0
    assert a_to_b.link.duplicated == model.duplicated > 0
    assert b_to_a.packets == 0
    assert (
        "a->b: 300 packets" in a_to_b.summary() and f"lost {model.lost_random}" in a_to_b.summary()
    )


def test_one_readiness_event_reads_a_bounded_batch() -> None:
    with forwarder_on_socketpairs(LinkConfig(), seed=1) as (loop, forwarder, a, b):
        for i in range(READ_BATCH + 20):
            a.send(b"p%d" % i)
        a_to_b = forwarder.directions[0]
        a_to_b.handle_io(READ)
        assert a_to_b.packets == READ_BATCH
        a_to_b.handle_io(READ)
        assert a_to_b.packets == READ_BATCH + 20
        for _ in range(3):
            loop.run_once(0)
        assert drain(b) == [b"p%d" % i for i in range(READ_BATCH + 20)]


# -- the command, on real namespaces -------------------------------------------------


def link_name(what: str) -> str:
    """A name no other link on this machine uses (a benchmark may run the default one)."""
    return f"t{os.getpid()}-{what}"


class RunningLink:
    """``fivetuple link --name NAME OPTIONS [-- CMD]`` as a process, read by its ready line.

    ``namespaces`` are the inodes of its two namespaces (the descriptors it holds).
    """

    def __init__(self, name: str, *options: str, command: tuple[str, ...] = ()) -> None:
        self.name = name
        args = [sys.executable, "-m", "fivetuple", "link", "--name", name, *options]
        if command:
            args += ["--", *command]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != ready_line(name):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"link did not start: {line!r} {err!r}")
        self.pid = self.proc.pid
        self.namespaces = namespaces_held_by(self.pid)
        assert len(self.namespaces) == 2, self.namespaces

    def run(
        self, side: str, *command: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """``fivetuple link run --name NAME SIDE -- COMMAND``, to completion."""
        return run_cli("link", "run", "--name", self.name, side, "--", *command, timeout=timeout)

    def start(self, side: str, *command: str) -> subprocess.Popen[str]:
        """The same in the background, stdout piped (the caller waits for it)."""
        return subprocess.Popen(
            [sys.executable, "-m", "fivetuple", "link", "run", "--name", self.name, side, "--", *command],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )  # fmt: skip

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> tuple[int, str]:
        """Send ``sig``; returns (exit status, stderr)."""
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 20) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def __enter__(self) -> RunningLink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


def namespaces_held_by(pid: int) -> set[str]:
    """The network namespaces (``net:[INODE]``) that process ``pid`` holds descriptors of."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("net:["):
            held.add(target)
    return held


def holders(namespaces: set[str], descriptors: bool = True) -> dict[int, str]:
    """Every process inside one of ``namespaces`` or (``descriptors``) holding a
    descriptor of one, what keeps a network namespace alive: ``{pid: comm}``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        links = [f"/proc/{entry}/ns/net"]
        try:
            if descriptors:
                links += [f"/proc/{entry}/fd/{fd}" for fd in os.listdir(f"/proc/{entry}/fd")]
            for path in links:
                if os.readlink(path) in namespaces:
                    found[int(entry)] = Path(f"/proc/{entry}/comm").read_text().strip()
                    break
        except OSError:  # gone meanwhile
            continue
    return found


def assert_nothing_left(link: RunningLink) -> None:
    """No namespace, TUN device or process of ``link`` is left, and it is not running."""
    wait_for(lambda: not holders(link.namespaces), 10, "the link's namespaces to be released")
    named = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    assert link.name not in named.stdout
    host_links = subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert TUN_NAME not in host_links
    assert not any(link.name in entry for entry in _listdir("/run/fivetuple"))
    gone = link.run("a", "true")
    assert gone.returncode == 2
    assert_one_line(gone.stderr, "no link named")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def assert_one_line(stderr: str, *words: str) -> None:
    """``stderr`` is one ``fivetuple: error:`` line containing ``words``, no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fivetuple: error: "), stderr
    assert all(word in lines[0] for word in words), stderr


SINK = """
import hashlib, socket, sys
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
server.settimeout(60)
conn, _ = server.accept()
conn.settimeout(60)
digest, size = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk)
    size += len(chunk)
print(size, digest.hexdigest(), flush=True)
"""

SOURCE = """
import random, socket, sys
data = random.Random(16).randbytes(int(sys.argv[3]))
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60) as sock:
    sock.sendall(data)
"""

UDP_ECHO = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 0))
print(sock.getsockname()[1], flush=True)
sock.settimeout(30)
while True:
    data, peer = sock.recvfrom(2048)
    sock.sendto(data, peer)
"""

UDP_PROBE = """
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(1.0)
target = (sys.argv[1], int(sys.argv[2]))
rtts = []
for i in range(int(sys.argv[3])):
    token = str(i).encode()
    start = time.monotonic()
    sock.sendto(token, target)
    try:
        while sock.recv(2048) != token:  # a late echo of an earlier probe
            pass
    except TimeoutError:  # lost on the way there or back
        continue
    rtts.append(time.monotonic() - start)
print(json.dumps(rtts))
"""


def read_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    """The next line ``proc`` prints, or fail after ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line within the timeout"
    return proc.stdout.readline().strip()


@real_link
@pytest.mark.timeout(120)
def test_a_transfer_over_5_percent_loss_arrives_whole_and_the_kernel_retransmits() -> None:
    with RunningLink(
        link_name("tcp"), "--loss", "0.05", "--delay", str(DELAY_MS), "--seed", "7"
    ) as link:
        server = link.start("a", sys.executable, "-c", SINK, A_ADDRESS)
        try:
            port = read_line(server)
            sent = link.run(
                "b", sys.executable, "-c", SOURCE, A_ADDRESS, port, str(TRANSFER_BYTES), timeout=90
            )
            assert sent.returncode == 0, sent.stderr
            size, digest = read_line(server, timeout=60).split()
        finally:
            server.kill()
            server.wait(timeout=10)
        retrans = link.run("b", "nstat", "-asz", "TcpRetransSegs")
        status, err = link.stop()
    expected = hashlib.sha256(random.Random(16).randbytes(TRANSFER_BYTES)).hexdigest()
    assert (int(size), digest) == (TRANSFER_BYTES, expected)
    match = re.search(r"TcpRetransSegs\s+(\d+)", retrans.stdout)
    assert match and int(match.group(1)) > 0, retrans.stdout + retrans.stderr
    assert status == 0, err
    losses = [int(n) for n in re.findall(r"lost (\d+)", err)]
    assert len(losses) == 2 and sum(losses) > 0, err


@real_link
@pytest.mark.timeout(90)
def test_the_round_trip_time_is_twice_the_delay() -> None:
    with RunningLink(
        link_name("rtt"), "--loss", "0.05", "--delay", str(DELAY_MS), "--seed", "7"
    ) as link:
        server = link.start("a", sys.executable, "-c", UDP_ECHO, A_ADDRESS)
        try:
            port = read_line(server)
            probe = link.run(
                "b", sys.executable, "-c", UDP_PROBE, A_ADDRESS, port, "30", timeout=60
            )
        finally:
            server.kill()
            server.wait(timeout=10)
    assert probe.returncode == 0, probe.stderr
    rtts = json.loads(probe.stdout)
    assert len(rtts) >= 20, rtts
    expected = 2 * DELAY_MS / 1000
    assert abs(statistics.median(rtts) - expected) <= 0.1 * expected, rtts


@real_link
@pytest.mark.timeout(60)
def test_ctrl_c_removes_everything_and_stops_what_was_left_inside() -> None:
    with RunningLink(link_name("int")) as link:
        shown = {side: link.run(side, "ip", "-o", "-4", "addr", "show", TUN_NAME) for side in "ab"}
        mtu = link.run("b", "ip", "-o", "link", "show", TUN_NAME)
        left_inside = link.start("b", "sleep", "60")
        wait_for(
            lambda: "sleep" in holders(link.namespaces, descriptors=False).values(),
            10,
            "sleep to run in b",
        )
        status, err = link.stop(signal.SIGINT)
        assert left_inside.wait(timeout=10) == -signal.SIGTERM
    assert f"inet {A_ADDRESS}/24" in shown["a"].stdout, shown["a"]
    assert f"inet {B_ADDRESS}/24" in shown["b"].stdout, shown["b"]
    assert "mtu 1500" in mtu.stdout and "qlen 1000" in mtu.stdout, mtu
    assert status == 0, err
    assert "stopping 1 processes left in its namespaces" in err
    summary = err.strip().splitlines()[-1]
    assert "a->b: " in summary and "b->a: " in summary and "lost 0" in summary, err
    assert_nothing_left(link)


def command_of(link: RunningLink, comm: str) -> int:
    """The pid of the link's command (its child called ``comm``), once it runs."""

    def find() -> int | None:
        for pid in child_pids(link.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    return pid
            except FileNotFoundError:
                pass
        return None

    pid: int = wait_for(find, 10, f"the link's command {comm}")
    return pid


@real_link
@pytest.mark.timeout(60)
def test_kill_9_of_the_link_takes_its_command_and_leaves_nothing() -> None:
    with RunningLink(link_name("kill"), command=("sleep", "60")) as link:
        sleeper = command_of(link, "sleep")
        os.kill(link.pid, signal.SIGKILL)
        status, _ = link.wait()
        assert status == -signal.SIGKILL
        wait_for(lambda: not Path(f"/proc/{sleeper}").exists(), 10, "the command to die with it")
    assert_nothing_left(link)


@real_link
@pytest.mark.timeout(60)
def test_kill_9_of_its_command_ends_the_link_with_the_commands_status() -> None:
    with RunningLink(link_name("cmd"), command=("sleep", "60")) as link:
        os.kill(command_of(link, "sleep"), signal.SIGKILL)
        status, err = link.wait()
    assert status == 128 + signal.SIGKILL, err
    assert "a->b: " in err.strip().splitlines()[-1], err
    assert_nothing_left(link)


@real_link
@pytest.mark.timeout(60)
def test_the_command_runs_in_side_a_and_its_status_is_the_links() -> None:
    script = f"ip -o -4 addr show {TUN_NAME} | grep -q 'inet {A_ADDRESS}/' && exit 3"
    name = link_name("status")
    done = run_cli("link", "--name", name, "--", "sh", "-c", script, timeout=30)
    assert done.returncode == 3, done.stderr
    assert done.stdout.strip() == ready_line(name)


@real_link
@pytest.mark.timeout(60)
def test_what_cannot_run_is_one_line_and_exit_2() -> None:
    name = link_name("errors")
    not_running = run_cli("link", "run", "--name", name, "a", "--", "true")
    assert not_running.returncode == 2
    assert_one_line(not_running.stderr, "no link named", "fivetuple link --name")
    no_command = run_cli("link", "--name", name, "--", "no-such-command-here")
    assert no_command.returncode == 2
    assert_one_line(no_command.stderr, "'no-such-command-here'", "no such command")
    with RunningLink(name) as link:
        missing = link.run("b", "no-such-command-here")
        assert missing.returncode == 2
        assert_one_line(missing.stderr, "no such command")
        again = run_cli("link", "--name", name)
        assert again.returncode == 2
        assert_one_line(again.stderr, "already running", f"(pid {link.pid})", "--name")
        status, err = link.stop(signal.SIGTERM)
    assert status == 0, err


@real_link
@pytest.mark.timeout(30)
@pytest.mark.skipif(
    shutil.which("setpriv") is None, reason="setpriv (util-linux) drops capabilities"
)
def test_without_the_capabilities_it_says_to_use_root() -> None:
    done = subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin,-net_admin", "--",
         sys.executable, "-m", "fivetuple", "link", "--name", link_name("nocap")],
        capture_output=True, text=True, timeout=20, env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode == 2
    assert_one_line(done.stderr, "needs root", "sudo")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--loss", "2"), "--loss"),
        (("--name", "no spaces"), "--name"),
        (("--blackout", "later"), "--blackout"),
        (("sleep", "1"), "after --"),
        (("--",), "nothing after --"),
        (("run", "a"), "after --"),
        (("run", "--delay", "5", "a", "--", "true"), "--delay"),
        (("run", "c", "--", "true"), "sides a and b"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: tuple[str, ...], words: str) -> None:
    done = run_cli("link", *args)
    assert done.returncode == 2
    assert_one_line(done.stderr, words)
