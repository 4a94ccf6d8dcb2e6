"""TLS on a non-blocking socket, two ways: SSLObject over memory BIOs, or an SSLSocket.

Issue 15 asks the TLS transport to choose by measuring. This file holds a minimal
epoll echo server written both ways, and the benchmark that compares them.

Theory of operation
-------------------
``python bench/tls_io.py serve --way WAY --cert FILE --key FILE [PORT]`` is
the server: one thread, one level-triggered ``select.epoll``, a listener that
accepts in a bounded batch, and per connection either

- ``bio``: an ``ssl.SSLObject`` between two ``ssl.MemoryBIO``. A readable event is
  one ``os.read`` of up to 64 KiB fed to the incoming BIO; ``SSLObject.read`` is then
  called until it raises ``SSLWantReadError`` (it makes no system call), each chunk
  is written back with ``SSLObject.write``, and what the outgoing BIO holds goes out
  in one ``os.write``. OpenSSL never touches the descriptor.
- ``bio-pending``: the same, but the reading stops as soon as neither the incoming
  BIO nor the SSLObject (``pending()``) holds a byte, which saves the raise and catch
  of the last ``SSLWantReadError`` of each event: how much of ``bio``'s cost is that.
- ``socket``: an ``ssl.SSLSocket`` wrapped around the non-blocking descriptor
  (``do_handshake_on_connect=False``). A readable event calls ``recv`` (64 KiB), and
  again only while ``pending()`` says OpenSSL holds decrypted bytes: epoll is
  level-triggered and OpenSSL reads no further than the record it needs (no
  read-ahead), so nothing waits unseen; each chunk goes back with ``send``.
  ``SSLWantReadError``/``SSLWantWriteError`` say which readiness to wait for; an
  ``SSLSocket.send`` that raised must be retried with the same bytes.

Both use the same context (``ssl.PROTOCOL_TLS_SERVER``, the standard library's
default: TLS 1.3 with a TLS 1.3 client), set TCP_NODELAY, keep unsent bytes in a
per-connection queue watched with EPOLLOUT only while it is not empty, and close on
EOF, close_notify or any TLS error. Neither sends close_notify.

Without arguments, it measures both under echo_load.c with ``--tls`` (1 KiB
ping-pong, 50 and 1,000 connections; server on CPU 0, load on CPU 1; interleaved
rounds, medians): round trips per second, the server's CPU per round trip (user +
system, /proc, between the load's START and END marks), and, in one more untimed
run each under ``strace -c -f``, the server's system calls per round trip. It prints
a Markdown table.

usage: python bench/tls_io.py [--rounds 5] [--duration 5] [--conns 50 1000] [--no-syscalls]
       python bench/tls_io.py serve --way bio|bio-pending|socket --cert FILE --key FILE [PORT]
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import ClassVar

from harness import (
    LOAD_SLACK_S,
    BenchFailure,
    MarkedLoad,
    RunningServer,
    SyscallCount,
    build_tls_load,
    command_line,
    note,
    raise_fd_limit,
    run_marked,
    spread,
    throwaway_cert,
)

READ_BYTES = 64 * 1024
#: Connections accepted per readable event of the listener.
ACCEPT_BATCH = 64
WAYS = ("bio", "bio-pending", "socket")
WARMUP_S = 1.0
#: How long the traced load keeps its connections after its END (strace detaches meanwhile).
LINGER_S = 5.0

# -- the server, one way or the other ------------------------------------------------


class BioConn:
    """One connection: an SSLObject between two memory BIOs, the descriptor ours."""

    __slots__ = ("fd", "incoming", "obj", "outgoing", "pending", "shaken", "sock")
    #: Stop reading once no byte is left in the incoming BIO or the SSLObject.
    STOP_WHEN_DRAINED: ClassVar[bool] = False

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.pending = b""  # ciphertext os.write did not take
        self.shaken = False

    def on_readable(self) -> bool:
        """Read, decrypt, echo; False when the connection is over."""
        try:
            data = os.read(self.fd, READ_BYTES)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self.incoming.write(data)
        obj = self.obj
        try:
            if not self.shaken:
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    return self.flush()
                self.shaken = True
            while True:
                try:
                    chunk = obj.read(READ_BYTES)
                except ssl.SSLWantReadError:
                    break
                if not chunk:
                    return False  # close_notify
                obj.write(chunk)
                if self.STOP_WHEN_DRAINED and not self.incoming.pending and not obj.pending():
                    break
        except ssl.SSLError:  # close_notify (SSLZeroReturnError) or a bad record
            return False
        return self.flush()

    def flush(self) -> bool:
        """Send what the outgoing BIO holds; False when the connection is broken."""
        out = self.outgoing.read()
        if self.pending:
            self.pending += out
            return True
        if not out:
            return True
        try:
            sent = os.write(self.fd, out)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        self.pending = out[sent:]
        return True

    def on_writable(self) -> bool:
        """Send queued ciphertext; False when the connection is broken."""
        try:
            sent = os.write(self.fd, self.pending)
        except BlockingIOError:
            return True
        except OSError:
            return False
        self.pending = self.pending[sent:]
        return True

    def wants_write(self) -> bool:
        return bool(self.pending)


class BioPendingConn(BioConn):
    """``BioConn`` that does not ask the SSLObject for more once both buffers are empty."""

    __slots__ = ()
    STOP_WHEN_DRAINED = True


class SocketConn:
    """One connection: an SSLSocket on the non-blocking descriptor."""

    __slots__ = ("fd", "pending", "read_wants_write", "shaken", "sock")

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.fd = self.sock.fileno()
        self.pending: list[bytes] = []  # plaintext to send; the first may be a retry
        self.read_wants_write = False
        self.shaken = False

    def on_readable(self) -> bool:
        """Handshake, or receive and echo; False when the connection is over."""
        sock = self.sock
        self.read_wants_write = False
        try:
            if not self.shaken:
                try:
                    sock.do_handshake()
                except ssl.SSLWantReadError:
                    return True
                except ssl.SSLWantWriteError:
                    self.read_wants_write = True
                    return True
                self.shaken = True
            while True:
                try:
                    data = sock.recv(READ_BYTES)
                except ssl.SSLWantReadError:
                    return True
                except ssl.SSLWantWriteError:
                    self.read_wants_write = True
                    return True
                if not data:
                    return False  # close_notify
                if not self.send(data):
                    return False
                if not sock.pending():
                    return True
        except (ssl.SSLError, OSError):
            return False

    def send(self, data: bytes) -> bool:
        """Echo ``data`` now, or queue it; False when the connection is broken."""
        if self.pending:
            self.pending.append(data)
            return True
        try:
            self.sock.send(data)  # without partial writes, all of it or an exception
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            self.pending.append(data)  # to be retried with the same bytes
        except (ssl.SSLError, OSError):
            return False
        return True

    def on_writable(self) -> bool:
        """Finish the handshake or a read that wanted to write, then send the queue."""
        if self.read_wants_write:
            return self.on_readable()
        while self.pending:
            try:
                self.sock.send(self.pending[0])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return True
            except (ssl.SSLError, OSError):
                return False
            del self.pending[0]
        return True

    def wants_write(self) -> bool:
        return bool(self.pending) or self.read_wants_write


Conn = BioConn | SocketConn
CONNS: dict[str, Callable[[socket.socket, ssl.SSLContext], Conn]] = {
    "bio": BioConn,
    "bio-pending": BioPendingConn,
    "socket": SocketConn,
}


def serve(way: str, cert: str, key: str, port: int) -> None:
    """Serve TLS echo on 127.0.0.1:PORT until SIGINT or SIGTERM."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        print(f"tls_io.py: cannot load {cert} and {key} ({exc}); check both files", file=sys.stderr)
        sys.exit(2)
    make = CONNS[way]
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    listener.setblocking(False)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    conns: dict[int, Conn] = {}
    writing: set[int] = set()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"listening on tls://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    try:
        while True:
            for fd, events in ep.poll():
                if fd == lfd:
                    for _ in range(ACCEPT_BATCH):
                        try:
                            sock, _ = listener.accept()
                        except BlockingIOError:
                            break
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        conn = make(sock, ctx)
                        conns[conn.fd] = conn
                        ep.register(conn.fd, select.EPOLLIN)
                    continue
                conn = conns[fd]
                ok = True
                if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    ok = conn.on_readable()
                if ok and events & select.EPOLLOUT:
                    ok = conn.on_writable()
                if not ok:
                    ep.unregister(fd)
                    del conns[fd]
                    writing.discard(fd)
                    conn.sock.close()
                elif conn.wants_write() != (fd in writing):
                    if fd in writing:
                        writing.remove(fd)
                        ep.modify(fd, select.EPOLLIN)
                    else:
                        writing.add(fd)
                        ep.modify(fd, select.EPOLLIN | select.EPOLLOUT)
    except KeyboardInterrupt:
        pass


# -- the benchmark -------------------------------------------------------------------


def serve_argv(way: str, cert: Path, key: Path) -> list[str]:
    return [sys.executable, __file__, "serve", "--way", way, "--cert", str(cert), "--key", str(key)]


def load_argv(load: Path, port: int, conns: int, size: int, duration: float) -> list[str]:
    """echo_load.c's TLS ping-pong, with its warm-up."""
    args = ["127.0.0.1", str(port), str(conns), str(size), f"{duration:g}", f"{WARMUP_S:g}"]
    return [str(load), "--tls", *args]


def measure(
    way: str, conns: int, size: int, duration: float, cert: Path, key: Path, load: Path
) -> dict[str, float]:
    """One server, one load: round trips/s and the server's CPU per round trip."""
    with RunningServer(serve_argv(way, cert, key), name=way) as server:
        run = run_marked(server, load_argv(load, server.port, conns, size, duration), 30.0)
    return run.echo_figures(way)


def measure_syscalls(
    way: str, conns: int, size: int, duration: float, cert: Path, key: Path, load: Path
) -> dict[str, float]:
    """The server's system calls per round trip, under strace (untimed).

    strace is attached at the load's START mark (handshakes and warm-up are
    over) and detached after its END, while the load lingers with its
    connections open, so that neither the handshakes nor the closes are counted.
    """
    linger = ["--linger", f"{LINGER_S:g}"]
    with (
        RunningServer(serve_argv(way, cert, key), name=way) as server,
        MarkedLoad([*load_argv(load, server.port, conns, size, duration), *linger]) as run,
    ):
        run.wait_mark("START", LOAD_SLACK_S)
        with SyscallCount(server.pid) as counted:
            run.wait_mark("END", duration + LOAD_SLACK_S)
            result = run.result(LOAD_SLACK_S)
    roundtrips = int(result["roundtrips"])
    return {name: count / roundtrips for name, count in counted.calls.items()}


def ratio(values: list[float]) -> str:
    found = spread(values)
    return "" if found is None else f"{found.median:.2f}x [{found.low:.2f}-{found.high:.2f}]"


def render(
    argv: list[str],
    rounds: int,
    conns_list: list[int],
    runs: dict[tuple[str, int], list[dict[str, float]]],
    syscalls: dict[tuple[str, int], dict[str, float]],
) -> str:
    lines = [
        f"Command: `{command_line(__file__, argv)}` (TLS 1.3, 1 KiB ping-pong, "
        f"{rounds} interleaved rounds).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}; server on CPU 0, "
        "load (echo_load.c --tls) on CPU 1.",
        "",
        "Medians over the rounds; the ratios are medians of per-round ratios to `bio` [range].",
        "Load CPU: the load's CPU time over the measured window (100% = its CPU is the limit).",
        "System calls: one more run of each under `strace -c -f` (untimed), per round trip;",
        "reads: read or recvfrom; writes: write or sendto.",
        "",
        "| way | conns | round trips/s | vs bio | server CPU us/rt (user+sys) | vs bio "
        "| load CPU | reads/rt | writes/rt | epoll_wait/rt | syscalls/rt |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for conns in conns_list:
        ref = runs[("bio", conns)]
        for way in WAYS:
            rs = runs[(way, conns)]
            calls = syscalls.get((way, conns), {})

            def per_rt(*names: str, calls: dict[str, float] = calls) -> str:
                return f"{sum(calls.get(n, 0.0) for n in names):.2f}" if calls else ""

            rps_ratio = ratio([a["rps"] / b["rps"] for a, b in zip(rs, ref, strict=True)])
            cpu_ratio = ratio([a["cpu_us"] / b["cpu_us"] for a, b in zip(rs, ref, strict=True)])
            lines.append(
                f"| {way} | {conns} | {median(r['rps'] for r in rs):,.0f} | {rps_ratio} | "
                f"{median(r['cpu_us'] for r in rs):.2f} ({median(r['user_us'] for r in rs):.2f}"
                f"+{median(r['sys_us'] for r in rs):.2f}) | {cpu_ratio} | "
                f"{median(r['load_pct'] for r in rs):.0f}% | "
                f"{per_rt('read', 'recvfrom')} | {per_rt('write', 'sendto')} | "
                f"{per_rt('epoll_wait')} | {per_rt('total')} |"
            )
    return "\n".join(lines)


def bench(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--conns", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--key-type", choices=("ec", "rsa"), default="ec", help="the certificate's key"
    )
    parser.add_argument(
        "--no-syscalls", action="store_true", help="skip the strace runs (strace not installed)"
    )
    args = parser.parse_args(argv)
    raise_fd_limit()
    load = build_tls_load()
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    syscalls: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tls_io-") as tmp:
        cert, key = throwaway_cert(Path(tmp), args.key_type)
        for rnd in range(args.rounds):
            for conns in args.conns:
                for way in WAYS if rnd % 2 == 0 else WAYS[::-1]:
                    r = measure(way, conns, args.size, args.duration, cert, key, load)
                    runs.setdefault((way, conns), []).append(r)
                    note(
                        f"round {rnd + 1} {way:6s} conns={conns:5d} rps={r['rps']:8.0f} "
                        f"cpu/rt={r['cpu_us']:6.2f}us (user {r['user_us']:5.2f} "
                        f"sys {r['sys_us']:5.2f}) load {r['load_pct']:3.0f}%"
                    )
        if not args.no_syscalls:
            for conns in args.conns:
                for way in WAYS:
                    calls = measure_syscalls(way, conns, args.size, args.duration, cert, key, load)
                    syscalls[(way, conns)] = calls
                    note(
                        f"syscalls {way:6s} conns={conns:5d} per rt: "
                        + " ".join(f"{k}={v:.2f}" for k, v in calls.items() if v >= 0.01)
                    )
    print(render(argv, args.rounds, args.conns, runs, syscalls))


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        parser = argparse.ArgumentParser(prog="tls_io.py serve", description="TLS echo server")
        parser.add_argument("--way", choices=WAYS, required=True)
        parser.add_argument("--cert", required=True)
        parser.add_argument("--key", required=True)
        parser.add_argument("port", type=int, nargs="?", default=0)
        args = parser.parse_args(sys.argv[2:])
        serve(args.way, args.cert, args.key, args.port)
        return
    try:
        bench(sys.argv[1:])
    except BenchFailure as exc:
        print(f"tls_io.py: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
