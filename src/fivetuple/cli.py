"""The ``fivetuple`` command.

A person's mistake (a bad option, an address in use) gets one line on stderr
that names the problem and the fix, and exit status 2; never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ._backends import available_backends
from ._datagram import PEER_BURST, PEER_RATE_PER_S
from ._ledger import DEFAULT_MEMORY_BUDGET_BYTES
from ._log import configure as configure_logging
from ._log import event
from ._proxied import DEFAULT_TRUSTED, HEADER_TIMEOUT_S, ProxyPolicy, parse_trusted, proxied
from ._server import DEFAULT_BACKLOG, DEFAULT_GRACE_S, DEFAULT_SEND_TIMEOUT_S, Server
from ._tls import HANDSHAKE_TIMEOUT_S
from ._tls_context import MIN_VERSIONS
from .apps import APPS, MESSAGE_APPS, make_app
from .errors import SetupError
from .models import BLOCKING_MODELS, MODELS

logger = logging.getLogger("fivetuple")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7000
USAGE_EXIT = 2
OFF = "off"
#: bench --bulk: the longest a transfer may take, unless --duration says.
BULK_DURATION_S = 60.0

if TYPE_CHECKING:  # generic for the type checker (click 8.5); not subscriptable in click 8.2.0
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class ByteSize(_ParamType):
    """A number of bytes: ``65536``, ``64k``, ``256M``, ``1G`` (powers of 1024); or ``off``."""

    name = "size"

    def __init__(self, allow_off: bool = False) -> None:
        self.allow_off = allow_off

    def convert(self, value: Any, param: Any, ctx: Any) -> int | None:
        if isinstance(value, int) or value is None:
            return value
        text = str(value).strip().lower()
        if self.allow_off and text == OFF:
            return None
        number, unit = text.rstrip("kmgib"), text[len(text.rstrip("kmgib")) :]
        unit = unit.removesuffix("ib").removesuffix("b")
        try:
            size = int(number) * _SIZE_UNITS[unit]
        except (ValueError, KeyError):
            size = 0
        if size < 1:
            off = " or 'off'" if self.allow_off else ""
            self.fail(f"{value!r} is not a size such as 65536, 64k, 256M or 1G{off}", param, ctx)
        return size


class PositiveOrOff(_ParamType):
    """A number above 0 (seconds, a rate), or ``off``."""

    def __init__(self, what: str) -> None:
        self.name = self.what = what

    def convert(self, value: Any, param: Any, ctx: Any) -> float | None:
        if isinstance(value, float) or value is None:
            return value
        if str(value).strip().lower() == OFF:
            return None
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if not number > 0:
            self.fail(f"{value!r} is not a number of {self.what} above 0, or 'off'", param, ctx)
        return number


class WorkerCount(_ParamType):
    """A number of worker processes, 1 or more, or ``auto``: one per CPU this process may use."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return _usable_cpus()
        try:
            number = int(text)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is not a number of workers (1 or more) or 'auto'", param, ctx)
        return number


def _usable_cpus() -> int:
    """CPUs this process may run on (taskset and cgroups' cpusets count; os.cpu_count does not)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _proxy_trusted(ctx: Any, param: Any, value: tuple[str, ...]) -> tuple[str, ...]:
    try:
        parse_trusted(value)
    except SetupError as exc:
        raise click.BadParameter(exc.naming({"trusted": "CIDR"})) from None
    return value


def _backplane(ctx: Any, param: Any, value: str | None) -> Any:
    """--backplane: a well-formed redis:// URL whose Redis answers PING now."""
    if value is None:
        return None
    from .apps._backplane import check_reachable, parse_backplane_url

    try:
        config = parse_backplane_url(value)
        check_reachable(config)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except OSError as exc:
        raise click.BadParameter(
            f"no Redis answers at {value} ({exc}); start redis-server or fix the URL"
        ) from None
    return config


def _unix_mode(ctx: Any, param: Any, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise click.BadParameter(f"{value!r} is not octal permission bits such as 660 or 600")
    return mode


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fivetuple")
def cli() -> None:
    """One port, many clients: serve thousands of TCP clients from one thread."""


@cli.command()
@click.argument("app", type=click.Choice(sorted(APPS)), default="chat", required=False)
@click.option(
    "--host",
    default=None,
    help=f"Address to listen on [default: {DEFAULT_HOST}]; '::' for IPv6 and IPv4.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"TCP port; 0 picks a free one [default: {DEFAULT_PORT}].",
)
@click.option(
    "--unix",
    "unix_path",
    metavar="PATH",
    default=None,
    help="Listen on a Unix domain socket instead of TCP.",
)
@click.option(
    "--backend",
    type=click.Choice(available_backends()),
    default=None,
    help=f"Readiness multiplexer [default: {available_backends()[0]}].",
)
@click.option(
    "--model",
    type=click.Choice(MODELS),
    default=None,
    help="Concurrency model. iterative: one client at a time; threads: a thread per client; "
    "processes: a forked process per client (all three with blocking sockets, echo and "
    "discard only, one line for options they cannot honour). select, poll, epoll: the "
    "engine with that --backend (--model epoll is the default server).",
)
@click.option(
    "--backlog",
    type=click.IntRange(min=0),
    default=DEFAULT_BACKLOG,
    show_default=True,
    help="Listen backlog (clamped to net.core.somaxconn).",
)
@click.option(
    "--max-conns",
    type=click.IntRange(min=1),
    default=None,
    help="Stop accepting at this many connections; new clients wait in the backlog.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Close a client silent this long.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE_S,
    show_default=True,
    metavar="SECONDS",
    help="On SIGINT/SIGTERM, how long queued bytes may flush.",
)
@click.option(
    "--max-buffer-memory",
    type=ByteSize(allow_off=True),
    default=DEFAULT_MEMORY_BUDGET_BYTES,
    metavar="SIZE",
    help="Partial input and queued output all clients may hold together; past it the "
    f"biggest holders are closed [default: {DEFAULT_MEMORY_BUDGET_BYTES >> 20}M; 'off': no limit].",
)
@click.option(
    "--send-timeout",
    type=PositiveOrOff("seconds"),
    default=DEFAULT_SEND_TIMEOUT_S,
    metavar="SECONDS",
    help="Close a client whose queued replies have not moved for SECONDS "
    f"[default: {DEFAULT_SEND_TIMEOUT_S:g}; 'off': never].",
)
@click.option(
    "--sndbuf",
    type=ByteSize(),
    default=None,
    metavar="SIZE",
    help="Cap each client socket's kernel send buffer (SO_SNDBUF) [default: the kernel's].",
)
@click.option(
    "--rcvbuf",
    type=ByteSize(),
    default=None,
    metavar="SIZE",
    help="Cap each client socket's kernel receive buffer (SO_RCVBUF) [default: the kernel's].",
)
@click.option(
    "--unix-mode",
    metavar="MODE",
    default=None,
    callback=_unix_mode,
    help="Permission bits of the --unix socket file, in octal (e.g. 660) [default: the umask's].",
)
@click.option(
    "--codec",
    type=click.Choice(["raw", "lines", "length", "packets"]),
    default="raw",
    show_default=True,
    help="Framing: raw bytes, or whole messages (echo only).",
)
@click.option(
    "--udp", is_flag=True, help="Serve UDP datagrams on --host/--port instead of TCP (echo)."
)
@click.option(
    "--reliable",
    is_flag=True,
    help="Serve APP over reliable UDP (fivetuple.reliable) on --host/--port: each client a "
    "connection, in order and exactly once; the banner says rudp://HOST:PORT. Implies --udp.",
)
@click.option(
    "--udp-rate",
    type=PositiveOrOff("datagrams a second"),
    default=PEER_RATE_PER_S,
    metavar="N",
    help="With --udp: datagrams a second each peer may send; more are dropped and counted "
    f"[default: {PEER_RATE_PER_S:g}; 'off': no limit].",
)
@click.option(
    "--udp-burst",
    type=click.IntRange(min=1),
    default=PEER_BURST,
    metavar="N",
    help=f"With --udp: datagrams a peer may send at once before --udp-rate applies "
    f"[default: {PEER_BURST}].",
)
@click.option(
    "--tls-cert",
    metavar="FILE",
    default=None,
    help="Serve TLS with this PEM certificate chain (the server's certificate first).",
)
@click.option(
    "--tls-key",
    metavar="FILE",
    default=None,
    help="The PEM private key of --tls-cert [default: the one in the --tls-cert file].",
)
@click.option(
    "--tls-sni",
    metavar="NAME=CERT,KEY",
    multiple=True,
    help="Another certificate, for clients that ask for NAME (SNI); repeatable. Other "
    "names get --tls-cert.",
)
@click.option(
    "--tls-alpn",
    metavar="PROTO",
    multiple=True,
    help="Offer PROTO in ALPN (h2, http/1.1, ...); repeatable, most preferred first.",
)
@click.option(
    "--tls-client-ca",
    metavar="FILE",
    default=None,
    help="Mutual TLS: a client must present a certificate signed by a CA in FILE (PEM).",
)
@click.option(
    "--tls-min-version",
    type=click.Choice(sorted(MIN_VERSIONS)),
    default="1.2",
    show_default=True,
    help="The oldest TLS version accepted.",
)
@click.option(
    "--tls-handshake-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=HANDSHAKE_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Close a client whose TLS handshake takes longer.",
)
@click.option(
    "--tls-self-signed",
    is_flag=True,
    help="Serve TLS with a throwaway self-signed certificate for localhost, 127.0.0.1 and "
    "::1 (made with openssl, deleted at exit); logs its SHA-256 fingerprint.",
)
@click.option(
    "--proxy-protocol",
    is_flag=True,
    help="Every connection must begin with a PROXY protocol header (v1 or v2: HAProxy's "
    "send-proxy, send-proxy-v2) from a --proxy-trusted address; the client it names is then "
    "the peer everywhere (chat, admin, logs). docs/proxy-protocol.md.",
)
@click.option(
    "--proxy-trusted",
    metavar="CIDR",
    multiple=True,
    callback=_proxy_trusted,
    help="With --proxy-protocol: a balancer's network or address (10.0.0.0/8, 192.0.2.7); "
    "repeatable; connections from anywhere else are closed [default: 127.0.0.0/8 and ::1].",
)
@click.option(
    "--proxy-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=HEADER_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="With --proxy-protocol: close a connection whose PROXY header is not whole by then.",
)
@click.option(
    "--backplane",
    metavar="redis://HOST:PORT/PREFIX",
    callback=_backplane,
    help="chat only: join other chat nodes through this Redis (pub/sub per room, presence "
    "with a TTL); keys and channels start with PREFIX. docs/cluster.md.",
)
@click.option(
    "--write-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="MS",
    help="chat only: hold each member's output this long to send it with more lines in one "
    "write (fewer system calls per delivery; 0: coalesce within one loop iteration).",
)
@click.option(
    "--workers",
    type=WorkerCount(),
    default="1",
    show_default=True,
    help="Worker processes under one supervisor that owns the listening socket; "
    "'auto': one per CPU. SIGHUP reloads them with no connection lost. --max-conns is per worker.",
)
@click.option(
    "--balance",
    type=click.Choice(["reuseport", "shared"]),
    default=None,
    help="With --workers: one SO_REUSEPORT socket per worker (the kernel spreads clients), or "
    "one socket all workers accept from [default: reuseport; shared for --unix].",
)
@click.option(
    "--admin",
    "admin_addr",
    metavar="HOST:PORT",
    default=None,
    help="Serve the admin endpoint (web page, JSON, /metrics) here; loopback only.",
)
@click.option(
    "--admin-public", is_flag=True, help="Allow --admin on a non-loopback address (warns)."
)
@click.option(
    "--admin-tls",
    is_flag=True,
    help="Serve --admin over HTTPS, with the certificate of --tls-cert (or --tls-self-signed).",
)
@click.option(
    "--status",
    "status_every",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Print a one-line status (connections, rates, descriptors) every SECONDS.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also log every accept, close (with its reason) and pause.",
)
@click.option("-q", "--quiet", is_flag=True, help="Log errors only.")
@click.option(
    "--log-json", is_flag=True, help="Log JSON lines instead of key=value lines (on stderr)."
)
@click.pass_context
def serve(
    ctx: click.Context,
    app: str,
    host: str | None,
    port: int | None,
    unix_path: str | None,
    backend: str | None,
    model: str | None,
    backlog: int,
    max_conns: int | None,
    idle_timeout: float | None,
    grace: float,
    max_buffer_memory: int | None,
    send_timeout: float | None,
    sndbuf: int | None,
    rcvbuf: int | None,
    unix_mode: int | None,
    codec: str,
    udp: bool,
    reliable: bool,
    udp_rate: float | None,
    udp_burst: int,
    tls_cert: str | None,
    tls_key: str | None,
    tls_sni: tuple[str, ...],
    tls_alpn: tuple[str, ...],
    tls_client_ca: str | None,
    tls_min_version: str,
    tls_handshake_timeout: float,
    tls_self_signed: bool,
    proxy_protocol: bool,
    proxy_trusted: tuple[str, ...],
    proxy_timeout: float,
    backplane: Any,
    write_delay: float,
    workers: int,
    balance: str | None,
    admin_addr: str | None,
    admin_public: bool,
    admin_tls: bool,
    status_every: float | None,
    verbose: bool,
    quiet: bool,
    log_json: bool,
) -> None:
    """Serve APP (echo, discard or chat; default chat) on one port.

    Prints one line when ready, then serves until SIGINT or SIGTERM: the first
    stops accepting and lets queued bytes flush for --grace seconds, a second
    exits at once. Logs go to stderr, one line per event (key=value, or JSON):
    starts, stops and faults; with -v every connection's accept and close too.

    With --tls-cert FILE (or --tls-self-signed) every client speaks TLS and the
    banner says tls://HOST:PORT. With --workers each worker reads the
    certificate files itself, so a SIGHUP reload serves renewed ones.

    With --reliable the app is served over reliable UDP (fivetuple.reliable:
    a byte stream per client, in order and exactly once) and the banner says
    rudp://HOST:PORT; talk to it with fivetuple client rudp://HOST:PORT.
    """
    if verbose and quiet:
        raise click.UsageError("-v and -q contradict each other; choose one")
    if model is not None:
        backend = _check_model(ctx, model, app, backend, codec)
    _refuse_what_proxy_cannot_do(ctx)
    if backplane is not None and (app != "chat" or reliable or udp or model is not None):
        raise click.UsageError("--backplane: serve chat over TCP only; leave it out")
    if write_delay and (app != "chat" or reliable or udp or model is not None):
        raise click.UsageError("--write-delay: serve chat over TCP only; leave it out")
    if reliable:
        _refuse_what_reliable_cannot_do(ctx, workers)
        configure_logging(1 if verbose else -1 if quiet else 0, as_json=log_json)
        status = _serve_reliable(
            app, host, port, backend, grace, max_conns, idle_timeout,
            admin_addr, admin_public, status_every,
        )  # fmt: skip
        sys.exit(status)
    _refuse_options_that_do_not_apply(ctx, udp)
    if unix_path is not None and (host is not None or port is not None):
        raise click.UsageError(
            "--unix cannot be combined with --host or --port; use one or the other"
        )
    if unix_mode is not None and unix_path is None:
        raise click.UsageError("--unix-mode applies to --unix PATH only")
    if codec != "raw" and app not in MESSAGE_APPS:
        raise click.UsageError(
            f"--codec {codec} applies to: {', '.join(MESSAGE_APPS)}; {app} speaks raw bytes"
        )
    _refuse_what_workers_cannot_do(ctx, app, workers, balance, unix_path, udp)
    _refuse_what_tls_cannot_do(ctx, udp, tls_cert, tls_key, tls_self_signed, admin_addr)
    configure_logging(1 if verbose else -1 if quiet else 0, as_json=log_json)
    if model in BLOCKING_MODELS:
        sys.exit(
            _serve_model(
                model, app, host, port, unix_path, unix_mode, backlog, grace, admin_addr,
                admin_public,
                dict(max_conns=max_conns, idle_timeout=idle_timeout, sndbuf=sndbuf, rcvbuf=rcvbuf),
            )
        )  # fmt: skip
    if udp:
        sys.exit(_serve_udp(app, host, port, backend, udp_rate, udp_burst, workers, balance))
    tls = None
    if tls_cert is not None or tls_self_signed:
        tls = _ServeTLS(
            tls_cert, tls_key, tls_sni, tls_alpn, tls_client_ca, tls_min_version, admin_tls
        )
    try:
        if tls is not None and tls_self_signed:
            tls.make_self_signed(host)
        status = _serve_tcp(
            app, codec, host, port, unix_path, unix_mode, backlog, grace, workers, balance,
            admin_addr, admin_public, status_every, tls, tls_handshake_timeout,
            dict(
                backend=backend, max_conns=max_conns, idle_timeout=idle_timeout,
                max_buffer_memory=max_buffer_memory, send_timeout=send_timeout,
                sndbuf=sndbuf, rcvbuf=rcvbuf,
            ),
            proxy=ProxyPolicy(proxy_trusted or DEFAULT_TRUSTED, header_timeout=proxy_timeout)
            if proxy_protocol else None,
            backplane=backplane,
            write_delay_s=write_delay / 1000,
        )  # fmt: skip
    finally:
        if tls is not None:
            tls.close()
    sys.exit(status)


def _serve_tcp(
    app: str,
    codec: str,
    host: str | None,
    port: int | None,
    unix_path: str | None,
    unix_mode: int | None,
    backlog: int,
    grace: float,
    workers: int,
    balance: str | None,
    admin_addr: str | None,
    admin_public: bool,
    status_every: float | None,
    tls: _ServeTLS | None,
    tls_handshake_timeout: float,
    options: dict[str, Any],
    proxy: ProxyPolicy | None = None,
    backplane: Any = None,
    write_delay_s: float = 0.0,
) -> int:
    """serve over TCP or a Unix socket, with or without TLS; returns the exit status."""
    # What --admin shows of the app (chat's room counters), one per server made.
    app_counters: list[Callable[[], dict[str, Any]]] = []

    def make_server() -> Server:
        # The TLS context is made here, so that each worker (and each one a
        # SIGHUP reload starts) reads the certificate files anew: renewed
        # certificates are served from the next reload on.
        return Server(
            _app_factory(app, codec, proxy, backplane, write_delay_s, app_counters),
            host if host is not None else DEFAULT_HOST,
            port if port is not None else DEFAULT_PORT,
            unix=unix_path,
            backlog=backlog,
            grace=grace,
            unix_mode=unix_mode,
            tls=None if tls is None else tls.context(),
            tls_handshake_timeout=tls_handshake_timeout,
            **options,
        )

    label = app if codec == "raw" else f"{app} codec={codec}"
    if tls is not None and unix_path is not None:
        label += " tls=on"  # a unix:// address does not say so by itself
    if proxy is not None:
        label += " proxy-protocol=on"
    server = make_server()
    admin_tls = None if tls is None else tls.admin_context()
    if workers > 1:
        # The server above only checked the options (one line, exit 2, before
        # any fork); each worker builds its own.
        server.loop.close()
        return _serve_workers(
            make_server,
            workers,
            balance,
            label,
            host,
            port,
            unix_path,
            unix_mode,
            backlog,
            grace,
            admin=(*_host_port(admin_addr, "--admin"), admin_public, admin_tls)
            if admin_addr
            else None,
            app=app,
            codec=codec,
            announce=None if tls is None else tls.announce,
        )
    admin = None
    if admin_addr is not None or status_every is not None:
        from .admin import Observed, start_admin

        observed = Observed(server, app, codec, app_counters[-1] if app_counters else None)
        if admin_addr is not None:  # checked and bound before the banner says "listening"
            admin_host, admin_port = _host_port(admin_addr, "--admin")
            try:
                admin = start_admin(
                    observed, admin_host, admin_port, public=admin_public, tls=admin_tls
                )
            except SetupError as exc:  # its host and port are --admin's, not the server's
                raise SetupError(exc.naming(_ADMIN_FLAGS)) from None
        if status_every is not None:
            _print_status_every(observed, status_every)
    server.start()

    def ready() -> None:
        print(server.banner(label), flush=True)
        if admin is not None:
            print(f"admin on {_admin_url(admin.addresses[0])}", flush=True)
        _log_start(server.banner(label))
        if tls is not None:
            tls.announce(server.addresses[0])

    status = server.serve_forever(ready=ready)
    _log_stop(status)
    return status


def _app_factory(
    app: str,
    codec: str,
    proxy: ProxyPolicy | None,
    backplane: Any = None,
    write_delay_s: float = 0.0,
    counters: list[Callable[[], dict[str, Any]]] | None = None,
) -> Callable[[], Any]:
    """The app's protocol factory; behind ``proxied`` with --proxy-protocol.

    Args:
        counters: chat appends its room's ``counters`` here, for the admin
            endpoint's ``/stats`` and ``/metrics`` (``Observed.app_statistics``).
    """
    factory = make_app(app, None if codec == "raw" else codec)
    if app == "chat":  # chat's room, maybe joined through Redis
        from .apps.chat import ChatRoom

        room = ChatRoom(backplane=backplane, write_delay_s=write_delay_s)
        factory = room.protocol
        if counters is not None:
            counters.append(room.counters)
    return factory if proxy is None else proxied(factory, proxy)


def _refuse_what_proxy_cannot_do(ctx: click.Context) -> None:
    """One line for a --proxy-* option that cannot apply (docs/proxy-protocol.md)."""
    given = [
        _flag(ctx, name)
        for name in ("proxy_trusted", "proxy_timeout")
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    ]
    params = ctx.params
    if not params.get("proxy_protocol"):
        if given:
            raise click.UsageError(f"{', '.join(given)}: applies to --proxy-protocol; add it")
        return
    if params.get("udp") or params.get("reliable"):
        raise click.UsageError(
            "--proxy-protocol: TCP connections only, not --udp or --reliable; leave one out"
        )
    if params.get("tls_cert") is not None or params.get("tls_self_signed"):
        raise click.UsageError(
            "--proxy-protocol with TLS: not yet (the PROXY header comes before the TLS "
            "handshake, which this server reads from the first byte); terminate TLS at the "
            "balancer, or leave out --proxy-protocol"
        )


def _check_model(
    ctx: click.Context, model: str, app: str, backend: str | None, codec: str
) -> str | None:
    """--model: the engine's backend it names, or one line for what a blocking model cannot do."""
    from .models import BLOCKING_APPS, ENGINE_MODELS, refused

    if model in ENGINE_MODELS:
        if backend is not None and backend != model:
            raise click.UsageError(
                f"--model {model} is the engine with --backend {model}, which --backend "
                f"{backend} contradicts; give one of them"
            )
        return model
    if app not in BLOCKING_APPS:
        raise click.UsageError(
            f"--model {model} serves {' or '.join(BLOCKING_APPS)}, not {app}: {app} keeps one "
            f"room for every client, which only the engine has (--model {'|'.join(ENGINE_MODELS)})"
        )
    given = [
        param.name
        for param in ctx.command.params
        if param.name
        and ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE
        and not (param.name == "codec" and codec == "raw")
    ]
    refusals = refused(model, given)
    if refusals:
        flags = ", ".join(_flag(ctx, name) for name, _ in refusals)
        them = "it" if len(refusals) == 1 else "them"
        raise click.UsageError(
            f"{flags}: not with --model {model}: {refusals[0][1]}; leave {them} out, or use "
            f"the engine (--model {ENGINE_MODELS[-1]})"
        )
    return backend


def _serve_model(
    model: str,
    app: str,
    host: str | None,
    port: int | None,
    unix_path: str | None,
    unix_mode: int | None,
    backlog: int,
    grace: float,
    admin_addr: str | None,
    admin_public: bool,
    options: dict[str, Any],
) -> int:
    """serve with a blocking model (iterative, threads, processes); returns the exit status."""
    from .models import start_model_admin

    server = BLOCKING_MODELS[model](
        app,
        host if host is not None else DEFAULT_HOST,
        port if port is not None else DEFAULT_PORT,
        unix=unix_path,
        unix_mode=unix_mode,
        backlog=backlog,
        grace=grace,
        **options,
    )
    server.start()
    admin = None
    if admin_addr is not None:  # checked and bound before the banner says "listening"
        from .admin._http import check_admin_address

        admin_host, admin_port = _host_port(admin_addr, "--admin")
        try:
            check_admin_address(admin_host, admin_public)
            admin = start_model_admin(server, admin_host, admin_port)
        except SetupError as exc:  # its host and port are --admin's, not the server's
            server.close()
            raise SetupError(exc.naming(_ADMIN_FLAGS)) from None

    def ready() -> None:
        print(server.banner(app), flush=True)
        if admin is not None:
            print(f"admin on {_admin_url(admin.addresses[0])}", flush=True)
        _log_start(server.banner(app))

    try:
        status = server.serve_forever(ready=ready)
    finally:
        if admin is not None:
            admin.close()
    _log_stop(status)
    return status


def _admin_url(address: str) -> str:
    """The admin listener's address as a URL: ``http://`` (``https://`` over TLS)."""
    return address.replace("tcp://", "http://", 1).replace("tls://", "https://", 1)


#: serve's TLS options (the admin's included): all need a certificate, none goes with --udp.
_TLS_OPTIONS = (
    "tls_cert", "tls_key", "tls_sni", "tls_alpn", "tls_client_ca", "tls_min_version",
    "tls_handshake_timeout", "tls_self_signed", "admin_tls",
)  # fmt: skip


def _refuse_what_tls_cannot_do(
    ctx: click.Context,
    udp: bool,
    cert: str | None,
    key: str | None,
    self_signed: bool,
    admin_addr: str | None,
) -> None:
    """One line for TLS options that cannot work together (or at all, with --udp)."""
    given = [
        name
        for name in _TLS_OPTIONS
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    ]
    if not given:
        return
    flags = ", ".join(_flag(ctx, name) for name in given)
    if udp:
        raise click.UsageError(
            f"{flags}: TLS runs over TCP (or --unix); over UDP it would be DTLS, which "
            "fivetuple does not serve: leave out --udp or the TLS options"
        )
    if self_signed and (cert is not None or key is not None):
        raise click.UsageError(
            "--tls-self-signed makes its own certificate and key: leave out --tls-cert and "
            "--tls-key, or --tls-self-signed"
        )
    if cert is None and not self_signed:
        if key is not None:
            raise click.UsageError(
                "--tls-key was given without --tls-cert; pass the certificate with --tls-cert FILE"
            )
        raise click.UsageError(
            f"{flags}: TLS options, but no certificate; add --tls-cert FILE --tls-key FILE "
            "(or --tls-self-signed to try things out)"
        )
    if "admin_tls" in given and admin_addr is None:
        raise click.UsageError("--admin-tls applies to --admin HOST:PORT; add it")


class _ServeTLS:
    """serve's TLS options: the contexts they make, and a throwaway certificate's life.

    The contexts are made from the files every time they are asked for (each
    worker makes its own). ``--tls-self-signed`` writes its certificate and key
    into a private temporary directory, which ``close`` removes.
    """

    def __init__(
        self,
        cert: str | None,
        key: str | None,
        sni: tuple[str, ...],
        alpn: tuple[str, ...],
        client_ca: str | None,
        min_version: str,
        admin: bool,
    ) -> None:
        from ._tls_context import parse_sni_spec

        self.cert, self.key = cert, key
        self.sni: dict[str, tuple[str, str]] = {}
        for spec in sni:
            name, pair = parse_sni_spec(spec)
            if name.lower() in (known.lower() for known in self.sni):
                raise SetupError(
                    f"{{tls_sni}} names {name} twice; give each server name one certificate",
                    params=("tls_sni",),
                )
            self.sni[name] = pair
        self.alpn, self.client_ca, self.min_version = alpn, client_ca, min_version
        self.admin = admin
        self.self_signed: Any = None  # a _tls_context.SelfSigned
        self.directory: str | None = None

    def make_self_signed(self, host: str | None) -> None:
        """Make the throwaway certificate (for loopback, and ``host`` if it names one machine).

        Raises:
            SetupError: openssl is missing or fails (params: --tls-self-signed ...).
        """
        import tempfile

        from ._tls_context import SELF_SIGNED_NAMES, self_signed

        names = list(SELF_SIGNED_NAMES)
        if host and host not in names and host not in ("0.0.0.0", "::"):
            names.append(host)
        self.directory = tempfile.mkdtemp(prefix="fivetuple-tls-")
        self.self_signed = self_signed(self.directory, names)
        self.cert, self.key = self.self_signed.cert, self.self_signed.key

    def context(self) -> Any:
        """A new server ``ssl.SSLContext`` from the files.

        Raises:
            SetupError: a file is missing, unreadable, or not a matching PEM cert and key.
        """
        from ._tls_context import server_context

        return server_context(
            self.cert,
            self.key,
            sni=self.sni,
            alpn=self.alpn,
            client_ca=self.client_ca,
            min_version=self.min_version,
        )

    def admin_context(self) -> Any:
        """The admin endpoint's context with --admin-tls (the same certificate; HTTP/1.1
        in ALPN; no client certificate asked for), or None without it."""
        if not self.admin:
            return None
        from ._tls_context import server_context

        return server_context(self.cert, self.key, alpn=("http/1.1",), min_version=self.min_version)

    def announce(self, address: str) -> None:
        """Log the throwaway certificate's fingerprint and how to connect to ``address``."""
        made = self.self_signed
        if made is None:
            return
        event(
            logger,
            logging.WARNING,
            "tls-self-signed",
            f"serving a throwaway self-signed certificate for {', '.join(made.names)}; "
            f"SHA-256 fingerprint {made.fingerprint}",
            fingerprint=made.fingerprint,
            cert=made.cert,
        )
        if address.startswith("unix://"):
            how = f"openssl s_client -unix {address[7:]} -CAfile {made.cert}"
        else:
            target = address.replace("tls://0.0.0.0:", "tls://127.0.0.1:", 1)
            target = target.replace("tls://[::]:", "tls://[::1]:", 1)
            how = f"fivetuple client {target} --ca {made.cert} (or --insecure)"
        event(
            logger,
            logging.WARNING,
            "tls-connect",
            f"connect with: {how}; the certificate is deleted when the server stops",
            ca=made.cert,
        )

    def close(self) -> None:
        """Delete the throwaway certificate, if one was made."""
        if self.directory is not None:
            import shutil

            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


#: serve's options that mean something for TCP only, and for UDP only.
_TCP_ONLY = (
    "unix_path", "backlog", "max_conns", "idle_timeout", "grace", "max_buffer_memory",
    "send_timeout", "sndbuf", "rcvbuf", "unix_mode", "codec", "admin_addr", "admin_public",
    "status_every",
)  # fmt: skip
_UDP_ONLY = ("udp_rate", "udp_burst")


def _refuse_what_workers_cannot_do(
    ctx: click.Context, app: str, workers: int, balance: str | None, unix: str | None, udp: bool
) -> None:
    """One line for a combination with --workers (or --balance) that cannot work yet."""
    if balance == "reuseport" and unix is not None:
        raise click.UsageError(
            "--balance reuseport is for TCP; every worker shares the one --unix socket "
            "(use --balance shared, the default with --unix)"
        )
    if workers == 1:
        if ctx.get_parameter_source("balance") is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("--balance applies to --workers 2 or more")
        return
    if ctx.get_parameter_source("status_every") is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(
            f"{_flag(ctx, 'status_every')}: not yet with --workers; watch the workers with "
            "--admin (fivetuple top), or use --workers 1"
        )
    if app == "chat":
        raise click.UsageError(
            "chat keeps its room in one process: with --workers each worker would have a "
            "room of its own; serve chat with --workers 1"
        )


def _serve_workers(
    make_server: Any,
    workers: int,
    balance: str | None,
    label: str,
    host: str | None,
    port: int | None,
    unix_path: str | None,
    unix_mode: int | None,
    backlog: int,
    grace: float,
    *,
    udp: bool = False,
    admin: tuple[str, int, bool, Any] | None = None,
    app: str = "",
    codec: str = "raw",
    announce: Callable[[str], None] | None = None,
) -> int:
    """Serve with a supervisor and ``workers`` forked workers (TCP, Unix, or
    ``udp``); returns the exit status.

    Args:
        admin: the admin endpoint's host, port, whether it may be public, and
            its ``ssl.SSLContext`` (None: plain HTTP).
        announce: called with the first address once the banner is out (TLS's notes).
    """
    import shutil
    import tempfile

    from ._supervisor import Supervisor

    gathering: list[Any] = []

    def ready(banner: str) -> None:
        print(banner, flush=True)
        if gathering:
            print(f"admin on {_admin_url(gathering[0].addresses[0])}", flush=True)
        _log_start(banner)
        if announce is not None:
            announce(banner.split()[2])

    on_loop = on_worker_start = None
    admin_dir = None
    if admin is not None:
        # One endpoint for the whole server (docs/admin.md, "Many workers"):
        # each worker serves its own on a Unix socket in a directory only this
        # user can enter; the supervisor gathers them on its own loop.
        from .admin import Observed, start_gathering_admin, start_worker_admin

        admin_dir = tempfile.mkdtemp(prefix="fivetuple-admin-")
        admin_host, admin_port, admin_public, admin_tls = admin

        def socket_path(slot: int, generation: int) -> str:
            return os.path.join(admin_dir or "", f"{slot}.{generation}.sock")

        def workers_now() -> dict[str, str]:
            return {
                str(w.slot) if w.current else f"{w.slot}@{w.generation}": socket_path(
                    w.slot, w.generation
                )
                for w in supervisor.ready_workers()
            }

        def on_loop(loop: Any) -> None:
            try:
                gathering.append(
                    start_gathering_admin(
                        loop,
                        workers_now,
                        admin_host,
                        admin_port,
                        public=admin_public,
                        shared=supervisor.balance == "shared",
                        tls=admin_tls,
                    )
                )
            except SetupError as exc:  # its host and port are --admin's, not the server's
                raise SetupError(exc.naming(_ADMIN_FLAGS)) from None

        def on_worker_start(server: Any, slot: int, generation: int) -> None:
            # A TCP or Unix worker: --admin is refused with --udp.
            start_worker_admin(Observed(server, app, codec), socket_path(slot, generation))

    supervisor = Supervisor(
        make_server,
        workers=workers,
        label=label,
        host=host if host is not None else DEFAULT_HOST,
        port=port if port is not None else DEFAULT_PORT,
        unix=unix_path,
        unix_mode=unix_mode,
        backlog=backlog,
        balance=balance,
        grace=grace,
        udp=udp,
        on_ready=ready,
        on_loop=on_loop,
        on_worker_start=on_worker_start,
    )
    try:
        supervisor.start()
        status = supervisor.run()
    finally:
        if admin_dir is not None:
            shutil.rmtree(admin_dir, ignore_errors=True)
    _log_stop(status)
    return status


def _refuse_options_that_do_not_apply(ctx: click.Context, udp: bool) -> None:
    """One line naming options given that this kind of server would silently ignore."""
    given = [
        name
        for name in (_TCP_ONLY if udp else _UDP_ONLY)
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    ]
    if not given:
        return
    flags = ", ".join(_flag(ctx, name) for name in given)
    if udp:
        raise click.UsageError(
            f"{flags}: TCP only; a UDP server has no connections to limit or time out "
            "(its peers are a table: --udp-rate and --udp-burst limit each one)"
        )
    raise click.UsageError(f"{flags}: UDP only; add --udp")


def _flag(ctx: click.Context, name: str) -> str:
    for param in ctx.command.params:
        if param.name == name and isinstance(param, click.Option):
            return max(param.opts, key=len)
    return name


def _log_start(banner: str) -> None:
    event(logger, logging.INFO, "start", banner, pid=os.getpid())


def _log_stop(status: int) -> None:
    event(logger, logging.INFO, "stop", f"stopped, exit status {status}", status=status)


def _serve_udp(
    app: str,
    host: str | None,
    port: int | None,
    backend: str | None,
    udp_rate: float | None,
    udp_burst: int,
    workers: int = 1,
    balance: str | None = None,
) -> int:
    from ._server import DatagramServer
    from .apps import DATAGRAM_APPS

    if app not in DATAGRAM_APPS:
        raise click.UsageError(f"--udp serves: {', '.join(DATAGRAM_APPS)}; {app} needs TCP")

    def make_server() -> DatagramServer:
        return DatagramServer(
            DATAGRAM_APPS[app](),
            host if host is not None else DEFAULT_HOST,
            port if port is not None else DEFAULT_PORT,
            backend=backend,
            peer_rate=udp_rate,
            peer_burst=udp_burst,
        )

    server = make_server()  # checks the options (one line, exit 2) before any fork
    if workers > 1:
        server.loop.close()
        return _serve_workers(
            make_server, workers, balance, app, host, port, None, None, DEFAULT_BACKLOG, 0.0,
            udp=True,
        )  # fmt: skip

    def ready() -> None:
        print(server.banner(app), flush=True)
        _log_start(server.banner(app))

    status = server.serve_forever(ready=ready)
    _log_stop(status)
    return status


#: serve's options that --reliable cannot honour (yet), and why, in a few words.
_NOT_RELIABLE = {
    "unix_path": "reliable UDP runs on a UDP port",
    "unix_mode": "reliable UDP runs on a UDP port",
    "backlog": "reliable UDP has no listen backlog (its handshake is a stateless cookie)",
    "max_buffer_memory": "each reliable connection caps its own buffers",
    "send_timeout": "a reliable connection's peer-vanished timeout plays its part",
    "sndbuf": "one UDP socket serves every reliable connection",
    "rcvbuf": "one UDP socket serves every reliable connection",
    "codec": "a reliable connection is a raw byte stream to the app",
    "udp_rate": "reliable UDP sets its own per-peer limit",
    "udp_burst": "reliable UDP sets its own per-peer limit",
    "balance": "reliable UDP runs in one process",
    **dict.fromkeys(_TLS_OPTIONS, "TLS over UDP would be DTLS, which fivetuple does not serve"),
    "admin_tls": "--admin-tls uses the certificate of --tls-cert, which --reliable does not take",
}


def _refuse_what_reliable_cannot_do(ctx: click.Context, workers: int) -> None:
    """One line for an option given with --reliable that it cannot honour."""
    given = [
        name
        for name in _NOT_RELIABLE
        if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    ]
    if given:
        flags = ", ".join(_flag(ctx, name) for name in given)
        raise click.UsageError(
            f"{flags}: not with --reliable ({_NOT_RELIABLE[given[0]]}); leave "
            f"{'it' if len(given) == 1 else 'them'} out, or serve TCP without --reliable"
        )
    if workers > 1:
        raise click.UsageError(
            "--workers: not with --reliable yet (every reliable connection lives in one "
            "process); serve it with --workers 1"
        )


def _serve_reliable(
    app: str,
    host: str | None,
    port: int | None,
    backend: str | None,
    grace: float,
    max_conns: int | None,
    idle_timeout: float | None,
    admin_addr: str | None,
    admin_public: bool,
    status_every: float | None,
) -> int:
    """serve APP over reliable UDP (``--reliable``); returns the exit status."""
    from ._reliable_shell import ReliableStreamServer
    from .reliable import MAX_CONNECTIONS, ConnectionConfig

    config = None
    if idle_timeout is not None:
        keepalive = min(10.0, idle_timeout / 3)  # a quiet client is kept, not timed out
        config = ConnectionConfig(idle_timeout_s=idle_timeout, keepalive_s=keepalive)
    server = ReliableStreamServer(
        make_app(app),
        host if host is not None else DEFAULT_HOST,
        port if port is not None else DEFAULT_PORT,
        backend=backend,
        config=config,
        grace=grace,
        max_connections=max_conns if max_conns is not None else MAX_CONNECTIONS,
    )
    server.start()
    admin = None
    if admin_addr is not None or status_every is not None:
        from .admin import Observed, start_admin

        observed = Observed(server, app)
        if admin_addr is not None:
            admin_host, admin_port = _host_port(admin_addr, "--admin")
            try:
                admin = start_admin(observed, admin_host, admin_port, public=admin_public)
            except SetupError as exc:
                raise SetupError(exc.naming(_ADMIN_FLAGS)) from None
        if status_every is not None:
            _print_status_every(observed, status_every)

    def ready() -> None:
        print(server.banner(app), flush=True)
        if admin is not None:
            print(f"admin on {_admin_url(admin.addresses[0])}", flush=True)
        _log_start(server.banner(app))

    status = server.serve_forever(ready=ready)
    _log_stop(status)
    return status


def _host_port(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port), or a one-line UsageError."""
    from ._address import parse_target

    try:
        _, (host, port) = parse_target(f"tcp://{text}")
    except SetupError:
        raise click.UsageError(f"{option} {text!r} is not HOST:PORT, e.g. 127.0.0.1:7001") from None
    if port > 65535:
        raise click.UsageError(f"{option} {text!r} is not HOST:PORT, e.g. 127.0.0.1:7001")
    return host, port


def _print_status_every(observed: Any, seconds: float) -> None:
    from .admin import status_line

    loop = observed.server.loop
    previous: list[Any] = [None]

    def tick() -> None:
        line, previous[0] = status_line(observed, previous[0])
        print(line, file=sys.stderr, flush=True)
        loop.call_later(seconds, tick)

    previous[0] = status_line(observed, None)[1]
    loop.call_later(seconds, tick)


def _tls_client_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a TLS client (``client tls://`` and ``bench ... tls://``)."""
    options = [
        click.option(
            "--insecure",
            is_flag=True,
            help="tls://: accept any certificate for any name (trying things out only).",
        ),
        click.option(
            "--ca",
            metavar="FILE",
            default=None,
            help="tls://: trust the CAs in FILE (PEM) instead of the system's.",
        ),
        click.option(
            "--cert",
            metavar="FILE",
            default=None,
            help="tls://: present this client certificate (PEM) to a server that asks (mutual TLS).",
        ),
        click.option(
            "--key",
            metavar="FILE",
            default=None,
            help="tls://: the private key of --cert [default: the one in the --cert file].",
        ),
        click.option(
            "--sni",
            metavar="NAME",
            default=None,
            help="tls://: ask for NAME (SNI) and check the certificate against it [default: the "
            "target's host if it is a name; for an address no SNI, and the address is checked].",
        ),
        click.option(
            "--alpn",
            metavar="PROTO",
            multiple=True,
            help="tls://: offer PROTO in ALPN; repeatable, most preferred first.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@click.argument("target")
@click.option(
    "--codec",
    type=click.Choice(["raw", "lines", "length", "packets"]),
    default="raw",
    show_default=True,
    help="Framing of what is sent and printed.",
)
@click.option(
    "--send",
    "send_file",
    metavar="FILE",
    default=None,
    help="Send FILE as one message and verify the echo.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="With --send: how long to wait for the echo [default: 30]. udp:// lines: how "
    "long to wait for the missing replies once stdin ends [default: 2]. rudp:// lines: how "
    "long to wait for the server to close once stdin ends [default: as long as it is up].",
)
@_tls_client_options
def client(
    target: str,
    codec: str,
    send_file: str | None,
    timeout: float | None,
    insecure: bool,
    ca: str | None,
    cert: str | None,
    key: str | None,
    sni: str | None,
    alpn: tuple[str, ...],
) -> None:
    """Connect to TARGET (tcp://HOST:PORT, tls://HOST:PORT, udp://HOST:PORT,
    rudp://HOST:PORT or unix://PATH) and talk.

    Each stdin line is sent (one message per line with a codec; one datagram
    per line over UDP) and every reply is printed. With --send, exits 0 if the
    echo matches the file, 1 if not. Over TLS, what the handshake negotiated
    is printed on stderr once connected; a certificate that cannot be trusted
    is one line and exit status 2. rudp:// is reliable UDP (a server started
    with --reliable): a byte stream like TCP's, whose end of input ends our
    side; the run ends when the server closes.
    """
    from .client import TLSClientOptions, run_client

    tls = TLSClientOptions(insecure, ca, cert, key, sni, alpn)
    sys.exit(run_client(target, codec, send_file, timeout, tls))


@cli.command()
@click.argument("args", nargs=-1, required=True, metavar="[echo|hold|connect] TARGET")
@click.option(
    "--conns", type=click.IntRange(min=1), default=50, show_default=True, help="Connections."
)
@click.option(
    "--size", type=int, default=64, show_default=True, metavar="BYTES", help="Message size (echo)."
)
@click.option(
    "--pipeline",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="Messages in flight per connection (echo; ignored with --rate, which sends on schedule).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to run (after connecting).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="R",
    help="Open loop: R messages/s per connection; latency counts from when each was due.",
)
@click.option(
    "--procs",
    type=click.IntRange(min=1, max=256),
    default=None,
    metavar="K",
    help="Worker processes; their results are merged. Default: as few as keep each "
    "under its descriptor limit (RLIMIT_NOFILE).",
)
@click.option(
    "--source-addrs",
    default=None,
    metavar="RANGE",
    help="Spread connections over source addresses, e.g. 127.0.0.2-127.0.0.254. Default "
    "for a tcp:// target in 127.0.0.0/8: from 127.0.0.2 on, as many as the ephemeral "
    "ports need.",
)
@click.option(
    "--server-pid",
    "server_pids",
    multiple=True,
    metavar="PID[,PID...]",
    help="The server's processes, for its memory per connection (hold, echo; repeatable). "
    "Default: those listening on the target's port, and their children.",
)
@click.option(
    "--connect-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="N",
    help="Open at most N connections per second (per process).",
)
@click.option(
    "--timeout",
    "reply_timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="A reply later than this is counted late (its latency is still recorded); "
    "one that never comes is missing (UDP: lost).",
)
@click.option(
    "--max-loss",
    "max_loss",
    type=click.FloatRange(min=0, max=100),
    default=0.0,
    show_default=True,
    metavar="PCT",
    help="UDP: the percentage of datagrams that may be lost before the run fails.",
)
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="hold: N connections picked at random send a verified echo every second "
    "during the hold (late, failed and their latency reported).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    metavar="S",
    help="The seed of the --sample pick [default: random, printed on stderr].",
)
@_tls_client_options
@click.option(
    "--tls-resume",
    is_flag=True,
    help="tls://, connect: offer each connection the session of the last one "
    "(reports how many handshakes were resumed).",
)
@click.option(
    "--bulk",
    type=ByteSize(),
    default=None,
    metavar="SIZE",
    help="rudp://, echo: each connection sends SIZE bytes (e.g. 20M) as one stream, as fast "
    "as it allows, and verifies the echo; reports goodput (Mbit/s), retransmitted bytes and "
    "RTT. --conns then defaults to 1 and --duration, the limit, to 60.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when it is a terminal).",
)
@click.pass_context
def bench(
    ctx: click.Context,
    args: tuple[str, ...],
    conns: int,
    size: int,
    pipeline: int,
    duration: float,
    rate: float | None,
    procs: int | None,
    source_addrs: str | None,
    server_pids: tuple[str, ...],
    connect_rate: float | None,
    reply_timeout: float,
    max_loss: float,
    sample: int,
    seed: int | None,
    insecure: bool,
    ca: str | None,
    cert: str | None,
    key: str | None,
    sni: str | None,
    alpn: tuple[str, ...],
    tls_resume: bool,
    bulk: int | None,
    as_json: bool,
    progress: bool | None,
) -> None:
    """Load TARGET (tcp://HOST:PORT, tls://HOST:PORT, udp://HOST:PORT,
    rudp://HOST:PORT or unix://PATH) and report what it did.

    \b
    echo     each connection sends a numbered, checksummed message and waits
             for it back (or --rate: sends on a schedule); every reply is
             verified, and a wrong, missing, late or reordered one is an
             error; over UDP each connection is one socket, and a datagram
             not echoed within --timeout is lost
    hold     open --conns connections, keep them idle for --duration once
             all are up, then check with one echo each that they are still
             up (TCP only);
             reports the connect rate, what stopped it, and memory per
             connection: the server's and the load's RSS, the kernel's;
             --sample N: N random connections echo during the hold
    connect  open and close connections, --conns at a time: connections/s
             (TCP only); over tls:// each also sends one message and
             waits for its echo: full handshakes/s (--tls-resume: resumed)
    chat     --conns chat members each say --rate lines/s (default 1):
             every member checks it gets every other's lines once and in
             order; fan-out latency, missing/duplicated/reordered counts;
             TARGET may list several tcp:// nodes, comma-separated

    Over tls:// the report adds the TLS versions and ciphers seen, handshake
    times, and failed handshakes by reason (each a failed connection).

    Over rudp:// (a server started with --reliable) each connection is a
    reliable-UDP connection used as a byte stream: echo verifies round trips
    as over TCP, and echo --bulk SIZE reports goodput instead.

    Exit status: 0 if all went well, 1 if anything failed (an error, a failed
    or lost connection, a limit, a target that does not echo, UDP loss over
    --max-loss), 2 for a bad option or an unreachable target.
    """
    import json

    from .loadgen import (
        MODES,
        BenchConfig,
        failed,
        parse_pids,
        parse_source_addrs,
        render,
        run_bench,
    )

    if len(args) == 2 and args[0] == "chat":  # issue 18: its own small runner
        _bench_chat(args[1], conns, rate, duration, as_json)
    if len(args) == 1:
        mode, target = "echo", args[0]
    elif len(args) == 2 and args[0] in MODES:
        mode, target = args
    else:
        raise click.UsageError(f"expected [{'|'.join(MODES)}] TARGET, got {' '.join(args)!r}")
    if bulk is not None:  # one transfer, with time to finish, unless told otherwise
        commandline = click.core.ParameterSource.COMMANDLINE
        if ctx.get_parameter_source("conns") is not commandline:
            conns = 1
        if ctx.get_parameter_source("duration") is not commandline:
            duration = BULK_DURATION_S
    config = BenchConfig(
        target=target,
        mode=mode,
        conns=conns,
        size=size,
        pipeline=pipeline,
        duration=duration,
        rate=rate,
        procs=procs,
        source_addrs=parse_source_addrs(source_addrs) if source_addrs else (),
        server_pids=parse_pids(server_pids),
        connect_rate=connect_rate,
        reply_timeout=reply_timeout,
        max_loss_pct=max_loss,
        sample=sample,
        seed=seed,
        insecure=insecure,
        ca=ca,
        cert=cert,
        key=key,
        sni=sni,
        alpn=alpn,
        tls_resume=tls_resume,
        bulk=bulk,
    )
    report = run_bench(config, show_progress=progress)
    if as_json:
        click.echo(json.dumps(report))
    else:
        from rich.console import Console

        Console().print(render(report))
    sys.exit(1 if failed(report) else 0)


def _bench_chat(
    target: str, conns: int, rate: float | None, duration: float, as_json: bool
) -> None:
    """bench chat TARGET: --conns members, each saying --rate lines/s (default 1)."""
    import json

    from .loadgen._chat_bench import bench_chat, chat_failed, render_chat

    try:
        report = bench_chat(target, conns, rate or 1.0, duration)
    except (SetupError, OSError) as exc:
        raise click.UsageError(f"bench chat {target}: {exc}") from None
    if not report["connected"]:
        raise click.UsageError(f"bench chat: no member could connect to {target}; is chat there?")
    click.echo(json.dumps(report) if as_json else render_chat(report))
    sys.exit(1 if chat_failed(report) else 0)


def _impairment_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """netsim's link model as options (``fivetuple link`` and ``fivetuple proxy``).

    The command gets ``delay``, ``jitter``, ``loss``, ``burst_enter``, ``burst_exit``,
    ``burst_loss``, ``duplicate``, ``reorder``, ``reorder_delay``, ``corrupt``,
    ``rate``, ``queue``, ``mtu``, ``blackout`` and ``seed``; ``_link_config_of``
    turns them into a ``netsim.LinkConfig``.
    """
    probability = click.FloatRange(0.0, 1.0)
    milliseconds = click.FloatRange(min=0.0)
    options = [
        click.option("--delay", type=milliseconds, default=0.0, metavar="MS",
                     help="One-way delay added to every packet, each way."),
        click.option("--jitter", type=milliseconds, default=0.0, metavar="MS",
                     help="Extra delay drawn from 0..MS (keeps order)."),
        click.option("--loss", type=probability, default=0.0, metavar="P",
                     help="Probability that a packet is lost, independently."),
        click.option("--burst-enter", type=probability, default=0.0, metavar="P",
                     help="Per-packet probability of entering a loss burst (Gilbert-Elliott)."),
        click.option("--burst-exit", type=probability, default=0.25, metavar="P",
                     help="Per-packet probability of a burst ending (mean burst 1/P packets)."),
        click.option("--burst-loss", type=probability, default=1.0, metavar="P",
                     help="Loss probability inside a burst."),
        click.option("--duplicate", type=probability, default=0.0, metavar="P",
                     help="Probability that a packet is delivered twice."),
        click.option("--reorder", type=probability, default=0.0, metavar="P",
                     help="Probability that a packet is held back --reorder-delay."),
        click.option("--reorder-delay", type=milliseconds, default=10.0, metavar="MS",
                     help="How long a reordered packet is held back."),
        click.option("--corrupt", type=probability, default=0.0, metavar="P",
                     help="Probability that one bit of a packet is flipped."),
        click.option("--rate", type=click.FloatRange(min=0.0, min_open=True), default=None,
                     metavar="MBIT", help="Link rate in Mbit/s (a queue forms in front of it)."),
        click.option("--queue", type=click.IntRange(min=1), default=None, metavar="BYTES",
                     help="Bytes the queue in front of --rate holds; more are tail-dropped."),
        click.option("--mtu", type=click.IntRange(min=68), default=None, metavar="BYTES",
                     help="Largest packet carried; longer ones are dropped."),
        click.option("--blackout", multiple=True, metavar="START-END",
                     help="Lose everything sent from START to END seconds after start; repeatable."),
        click.option("--seed", type=int, default=None, metavar="S",
                     help="Seed of the random choices (the same seed, the same fates)."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def _link_config_of(options: dict[str, Any], overhead_bytes: int = 0) -> Any:
    """The ``netsim.LinkConfig`` that ``_impairment_options``' values describe.

    Raises:
        SetupError: a --blackout that is not START-END, or a value netsim refuses.
    """
    from ._impair import link_config

    blackouts = []
    for text in options.get("blackout", ()):
        start, sep, end = text.partition("-")
        try:
            window = (float(start), float(end))
        except ValueError:
            window = (1.0, 0.0)
        if not sep or window[0] > window[1] or window[0] < 0:
            raise SetupError(
                f"--blackout {text!r} is not START-END in seconds with START <= END, e.g. 5-7"
            )
        blackouts.append(window)
    return link_config(
        delay_ms=options["delay"], jitter_ms=options["jitter"], loss=options["loss"],
        burst_enter=options["burst_enter"], burst_exit=options["burst_exit"],
        burst_loss=options["burst_loss"], duplicate=options["duplicate"],
        reorder=options["reorder"], reorder_delay_ms=options["reorder_delay"],
        corrupt=options["corrupt"], rate_mbit=options["rate"], queue_bytes=options["queue"],
        mtu=options["mtu"], blackouts=tuple(blackouts), overhead_bytes=overhead_bytes,
    )  # fmt: skip


def _admin_client_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of the commands that read an admin endpoint (``top``, ``conns``)."""
    options = [
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=5.0,
            show_default=True,
            metavar="SECONDS",
            help="How long to wait for the admin endpoint to connect and to answer.",
        ),
        click.option(
            "--ca",
            metavar="FILE",
            default=None,
            help="For an https:// address: trust the CAs in FILE (PEM) instead of the system's.",
        ),
        click.option(
            "--insecure",
            is_flag=True,
            help="For an https:// address: accept any certificate (trying things out only).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@click.argument("admin_addr", default="127.0.0.1:7001", required=False, metavar="[ADMIN_ADDR]")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Refresh every SECONDS.",
)
@click.option(
    "--sort",
    type=click.Choice(["bytes", "idle", "age"]),
    default="bytes",
    show_default=True,
    help="Sort the table (keys b, i, a while running).",
)
@_admin_client_options
def top(
    admin_addr: str, interval: float, sort: str, timeout: float, ca: str | None, insecure: bool
) -> None:
    """A live view of a server's connections (its --admin address); q quits.

    ADMIN_ADDR is HOST:PORT, or https://HOST:PORT for a server started with --admin-tls.
    """
    from .admin._top import run_top

    tls = _admin_client_tls(admin_addr, ca, insecure)
    sys.exit(run_top(admin_addr, interval, sort, timeout, tls))


@cli.command()
@click.argument("admin_addr", default="127.0.0.1:7001", required=False, metavar="[ADMIN_ADDR]")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@_admin_client_options
def conns(admin_addr: str, as_json: bool, timeout: float, ca: str | None, insecure: bool) -> None:
    """Print a server's connection table once (from its --admin address).

    ADMIN_ADDR is HOST:PORT, or https://HOST:PORT for a server started with --admin-tls.
    """
    from .admin._conns import run_conns

    tls = _admin_client_tls(admin_addr, ca, insecure)
    sys.exit(run_conns(admin_addr, as_json, timeout, tls))


def _admin_client_tls(admin_addr: str, ca: str | None, insecure: bool) -> Any:
    """The ``ssl.SSLContext`` to read an https:// admin address with (None: plain HTTP).

    Raises:
        click.UsageError: --ca or --insecure with an address that is not https://.
        SetupError: an unreadable CA file, --ca with --insecure.
    """
    from ._tls_context import client_context

    if not admin_addr.startswith("https://"):
        if ca is not None or insecure:
            raise click.UsageError(
                "--ca and --insecure apply to an https:// admin address (a server started "
                "with --admin-tls); give https://HOST:PORT"
            )
        return None
    return client_context(insecure=insecure, ca=ca)


#: Where ``_LinkCommand`` keeps the words after ``--`` (``ctx.meta``).
_LINK_COMMAND = "fivetuple.link.command"


class _LinkCommand(click.Command):
    """A command whose words after the first ``--`` are a command to run, kept whole.

    Click drops ``--`` and mixes what follows into the positional arguments, so
    ``fivetuple link -- run`` (run a program called run) and ``fivetuple link
    run`` could not be told apart; this keeps them apart.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta[_LINK_COMMAND] = args[at + 1 :]
            args = args[:at]
        return super().parse_args(ctx, args)


@cli.command(cls=_LinkCommand)
@click.argument("run", nargs=-1, metavar="[run a|b]")
@_impairment_options
@click.option(
    "--name",
    default="default",
    show_default=True,
    metavar="NAME",
    help="The link's name, for 'fivetuple link run --name NAME' (several links can run).",
)
@click.pass_context
def link(ctx: click.Context, /, run: tuple[str, ...], name: str, **impairment: Any) -> None:
    """Two network namespaces, a and b, joined by netsim's link model (needs root).

    \b
    fivetuple link [IMPAIRMENT OPTIONS] [--name NAME] [-- CMD ...]
    fivetuple link run [--name NAME] a|b -- CMD ...

    The first makes namespaces a (10.77.0.1/24) and b (10.77.0.2/24) joined by
    TUN devices, prints one line, and forwards every IP packet each way through
    the model (the same settings each way; --rate and --queue per direction)
    until Ctrl-C, or until CMD, run in a, exits (then with CMD's status).
    Everything it made goes when it ends, however it ends. The second runs CMD
    inside side a or b of a running link. See docs/link.md.
    """
    command = ctx.meta.get(_LINK_COMMAND)
    if command == []:
        raise click.UsageError("nothing after --: give the command to run, e.g. -- sleep 60")
    if run:
        if run[0] != "run" or len(run) != 2:
            raise click.UsageError(
                f"unexpected {' '.join(run)!r}: put the command after --, e.g. "
                "fivetuple link -- sleep 60, or fivetuple link run a -- ip addr"
            )
        given = [
            _flag(ctx, param)
            for param in impairment
            if ctx.get_parameter_source(param) is click.core.ParameterSource.COMMANDLINE
        ]
        if given:
            raise click.UsageError(
                f"{', '.join(given)}: options of the link itself; 'fivetuple link run' "
                "takes only --name"
            )
        if command is None:
            raise click.UsageError(f"give the command after --: fivetuple link run {run[1]} -- CMD")
        from .link import run_in

        run_in(name, run[1], command)
    from .link import run_link
    from .netsim import pick_seed

    config = _link_config_of(impairment)
    seed = impairment["seed"] if impairment["seed"] is not None else pick_seed()
    sys.exit(run_link(name, config, seed, command))


@cli.command()
@click.argument("listen")
@click.argument("upstream")
@click.option(
    "--toxic",
    "toxics",
    multiple=True,
    metavar="SPEC",
    help="A toxic: [NAME=]TYPE[:ATTR=VALUE,...][@upstream|@downstream][%TOXICITY], e.g. "
    "latency:latency=100,jitter=10@upstream; repeatable (docs/proxy.md).",
)
@click.option(
    "--admin",
    "admin_addr",
    metavar="HOST:PORT",
    default=None,
    help="Serve the toxics API (toxiproxy's /proxies/NAME/toxics) on HOST:PORT (loopback).",
)
@click.option("--name", default="proxy", show_default=True, help="The proxy's name in the API.")
@click.option(
    "--max-clients",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="UDP: clients in the NAT table at most (the least recently active makes room).",
)
@click.option(
    "--client-idle",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="UDP: a client silent both ways this long leaves the table.",
)
@_impairment_options
@click.option("-v", "--verbose", is_flag=True, help="Also log every connection's accept and close.")
@click.option("-q", "--quiet", is_flag=True, help="Log errors only.")
@click.option("--log-json", is_flag=True, help="Log JSON lines instead of key=value lines.")
@click.pass_context
def proxy(
    ctx: click.Context,
    /,
    listen: str,
    upstream: str,
    toxics: tuple[str, ...],
    admin_addr: str | None,
    name: str,
    verbose: bool,
    quiet: bool,
    log_json: bool,
    **options: Any,
) -> None:
    """Forward LISTEN to UPSTREAM, doing harm on the way (no root needed).

    LISTEN and UPSTREAM are both tcp://HOST:PORT or both udp://HOST:PORT. TCP
    takes --toxic (toxiproxy's toxics); UDP takes netsim's impairments (--loss,
    --delay, ...: each way) and --toxic netsim:FIELD=VALUE. Prints one line when
    ready; runs until SIGINT or SIGTERM, then logs what it did to whom. See
    docs/proxy.md.
    """
    from .proxy import run_proxy

    if verbose and quiet:
        raise click.UsageError("-v and -q contradict each other; choose one")
    configure_logging(1 if verbose else -1 if quiet else 0, as_json=log_json)
    source = click.core.ParameterSource.COMMANDLINE
    given = {n: _flag(ctx, n) for n in options if ctx.get_parameter_source(n) is source}
    admin = _host_port(admin_addr, "--admin") if admin_addr is not None else None
    status = run_proxy(
        listen, upstream, name=name, toxics=toxics, admin=admin, options=options,
        given=given, link_config=_link_config_of,
    )  # fmt: skip
    sys.exit(status)


@cli.command()
@click.argument("name", required=False, metavar="[NAME]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: table and claim.")
@click.option("--quick", is_flag=True, help="The short form (fewer clients, shorter waits).")
def lab(name: str | None, as_json: bool, quick: bool) -> None:
    """Show a claim of the socket texts on this machine: run experiment NAME on
    loopback and print what the kernel showed (ss, /proc, errno) and the claim.

    Alone, lists the experiments. Everything an experiment starts is stopped
    before it ends. Exit status: 0 if the numbers showed the claim, 1 if not
    (or it could not run), 2 for an unknown NAME or a missing tool. See docs/lab.md.
    """
    import json
    import signal

    from .lab import EXPERIMENTS, LabFailure, Options, listing, run_experiment

    if name is None:
        summaries = {n: e.summary for n, e in EXPERIMENTS.items()}
        click.echo(json.dumps(summaries) if as_json else listing())
        return
    if name not in EXPERIMENTS:
        raise click.UsageError(f"no experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    model = next((p for p in serve.params if p.name == "model"), None)
    choices = getattr(model.type, "choices", ()) if model is not None else ()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop what it started
    try:
        result = run_experiment(name, Options(quick, tuple(map(str, choices))))
    except LabFailure as exc:
        print(f"fivetuple: lab {name} could not run: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    click.echo(json.dumps(result.as_json()) if as_json else result.render())
    sys.exit(0 if result.shown else 1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning a person's mistakes into one line."""
    try:
        cli.main(args=argv, prog_name="fivetuple", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # pragma: no cover - click >= 8.2
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(USAGE_EXIT)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "fivetuple"
        _fail(f"{exc.format_message()} (see '{command} --help')")
    except SetupError as exc:
        _fail(exc.naming({param: flag_for(param) for param in exc.params}))
    except click.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)


#: start_admin's parameters as the command line spells them: its host and port
#: are --admin's, not the server's.
_ADMIN_FLAGS = {"host": "--admin", "port": "--admin port", "public": "--admin-public"}
#: Library parameters whose flag is not ``--`` + the name with dashes.
_FLAG_FOR_PARAM = {"peer_rate": "--udp-rate", "peer_burst": "--udp-burst"}


def flag_for(param: str) -> str:
    """The command-line flag of a library parameter: ``max_conns`` -> ``--max-conns``."""
    return _FLAG_FOR_PARAM.get(param, "--" + param.replace("_", "-"))


def _fail(message: str) -> None:
    message = " ".join(message.split())  # always one line
    print(f"fivetuple: error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT)
