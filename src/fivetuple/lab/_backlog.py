"""backlog: a listening socket that never calls accept(), and the queue in front of it.

Theory of operation. Linux queues up to backlog + 1 finished handshakes for
a listening socket (``ss -ltn`` shows the queue in Recv-Q and the backlog in
Send-Q). When the queue is full, a new client's SYN is dropped, not
answered: the client stays in SYN-SENT and retries (for about two minutes
with ``net.ipv4.tcp_syn_retries`` = 6), so it sees a timeout, not a refusal.
``net.ipv4.tcp_abort_on_overflow`` = 1 does not change that: it applies to a
handshake whose last ACK arrives when the queue is already full, and answers
it with a reset instead of ignoring it. On loopback a handshake completes
inside connect(), so such late handshakes are made with TCP_DEFER_ACCEPT:
the kernel keeps each one back until the client's first byte, and the
clients all send theirs once every handshake is done.

The setting is tried at 1 in a private network namespace (a child that
unshares its network, brings its loopback up and writes its own copy of the
sysctl), so the system's value is never changed; without the privilege to
make one it is read only, and those rows say so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

from ._procs import LabFailure, ss, sysctl
from ._table import Column, Result

if TYPE_CHECKING:
    from ._runner import Options

BACKLOG = 4
EXTRA = 4
WAIT_S = 1.5
QUICK_WAIT_S = 1.0
#: How long the late handshakes' clients wait for a reset after sending.
LATE_WAIT_S = 0.5
ABORT = "net.ipv4.tcp_abort_on_overflow"

COLUMNS = (
    Column("case", "clients"),
    Column("abort_on_overflow", "abort_on_overflow", f"{ABORT}: the system's, or 1 in a private "
           "network namespace"),
    Column("queued", "queued", "Recv-Q of the LISTEN socket in ss -ltn: finished handshakes "
           "waiting for accept()"),
    Column("backlog", "backlog", "Send-Q of the LISTEN socket in ss -ltn"),
    Column("no_answer", "no answer", "clients in SYN-SENT (ss -tn) or with nothing back after "
           "sending: the kernel dropped their packets"),
    Column("reset", "reset", "clients whose recv() failed with ECONNRESET"),
    Column("refused", "refused", "clients whose connect() failed with ECONNREFUSED"),
)  # fmt: skip


def run(options: Options) -> Result:
    """Fill a never-accepting listener's queue and show what the clients beyond it get."""
    wait = QUICK_WAIT_S if options.quick else WAIT_S
    system_abort = sysctl(ABORT)
    rows = [_full_queue(wait, system_abort), _late_handshakes(system_abort)]
    private = _in_private_namespace(wait)
    result = Result(
        "backlog",
        f"listen({BACKLOG}) and never accept(); {BACKLOG + 1 + EXTRA} clients connect",
        COLUMNS,
        rows,
        seed="004 and 003 6.3 on the backlog: if the queue fills up, new clients get "
        '"Connection Refused" (RST) or are ignored; 001 step C: the kernel holds them in '
        "the queue until the server can handle them",
        facts={
            f"{ABORT} (/proc/sys)": system_abort,
            "net.ipv4.tcp_syn_retries (/proc/sys)": sysctl("net.ipv4.tcp_syn_retries"),
            "net.core.somaxconn (/proc/sys)": sysctl("net.core.somaxconn"),
        },
    )
    if isinstance(private, str):
        result.notes.append(f"{ABORT}=1 not tried: {private}; the system's value is read only")
    else:
        rows[1:1] = private[:1]
        rows.append(private[1])
    result.notes.append(
        f"'no answer' clients were given up after {wait:g} s (the kernel would retry their "
        "SYN for about two minutes); the late handshakes use TCP_DEFER_ACCEPT"
    )
    _claim(result)
    return result


def _listener(defer: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if defer:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
    sock.bind(("127.0.0.1", 0))
    sock.listen(BACKLOG)
    return sock


def _listen_queue(port: int) -> tuple[int | None, int | None]:
    for fields in ss("-ltn", f"( sport = :{port} )"):
        return int(fields[1]), int(fields[2])
    return None, None


def _full_queue(wait: float, abort: str | None) -> dict[str, Any]:
    """backlog + 1 clients one after another, then EXTRA more at once."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(_listener())
        port = listener.getsockname()[1]
        refused = 0
        for _ in range(BACKLOG + 1):
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=2))
        late = []
        for _ in range(EXTRA):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            if code == errno.ECONNREFUSED:
                refused += 1
            late.append(sock)
        time.sleep(wait)
        pending = len(ss("-tn", "state", "syn-sent", f"( dport = :{port} )"))
        queued, backlog = _listen_queue(port)
    return {
        "case": f"{BACKLOG + 1} one by one, then {EXTRA} more",
        "abort_on_overflow": abort,
        "queued": queued,
        "backlog": backlog,
        "no_answer": pending,
        "reset": 0,
        "refused": refused,
    }


def _late_handshakes(abort: str | None) -> dict[str, Any]:
    """backlog + 1 + EXTRA handshakes that reach the queue only with the clients' first bytes."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(_listener(defer=True))
        port = listener.getsockname()[1]
        socks = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=2))
            for _ in range(BACKLOG + 1 + EXTRA)
        ]
        for sock in socks:
            sock.send(b"x")
        time.sleep(LATE_WAIT_S)
        reset = silent = 0
        for sock in socks:
            sock.setblocking(False)
            try:
                sock.recv(1)
            except BlockingIOError:
                silent += 1
            except ConnectionResetError:
                reset += 1
        queued, backlog = _listen_queue(port)
    return {
        "case": f"{BACKLOG + 1 + EXTRA} whose handshakes finish late",
        "abort_on_overflow": abort,
        "queued": queued,
        "backlog": backlog,
        "no_answer": silent - (queued or 0),
        "reset": reset,
        "refused": 0,
    }


def _in_private_namespace(wait: float) -> list[dict[str, Any]] | str:
    """Both cases again with tcp_abort_on_overflow = 1, in a child's own network namespace.

    Returns:
        The two rows, or why they could not be made.
    """
    from ..link._ns import unshare_net

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 1
        try:
            os.close(read_fd)
            try:
                unshare_net()
                subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
                with open("/proc/sys/" + ABORT.replace(".", "/"), "w") as f:
                    f.write("1")
                answer: Any = [_full_queue(wait, "1 (private)"), _late_handshakes("1 (private)")]
            except (OSError, subprocess.SubprocessError) as exc:
                answer = f"cannot make a private network namespace ({exc})"
            os.write(write_fd, json.dumps(answer).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + wait + 20
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], 0.5)
            if ready:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    if not chunks:
        raise LabFailure("the private-namespace half of the backlog experiment did not answer")
    answer = json.loads(b"".join(chunks))
    return answer if isinstance(answer, (list, str)) else "unexpected answer"


def _claim(result: Result) -> None:
    full = result.rows[0]
    late = [r for r in result.rows if "late" in r["case"]]
    aborted = [r for r in late if str(r["abort_on_overflow"]).startswith("1")]
    beyond = EXTRA
    shown = full["queued"] == BACKLOG + 1 and full["no_answer"] == beyond and full["refused"] == 0
    if aborted:
        shown = shown and aborted[0]["reset"] == beyond
    result.shown = shown
    lead = "Shown" if shown else "Not shown"
    tail = (
        f"; only a handshake that completes into a full queue is reset, and only with "
        f"tcp_abort_on_overflow=1 ({aborted[0]['reset']} of {BACKLOG + 1 + EXTRA})"
        if aborted
        else ""
    )
    result.claim = (
        f"{lead}: the kernel holds backlog + 1 = {full['queued']} finished handshakes for "
        f"accept() and ignores the clients beyond them ({full['no_answer']} left in SYN-SENT, "
        f"{full['refused']} refused): Linux drops their SYN rather than refusing it{tail}."
    )
