"""TLS on the command line: ``serve --tls-*``, ``client tls://``, ``--admin-tls`` (issue 15).

Every server is a real ``fivetuple serve`` process on port 0 (``CliServer``).
Its peers are Python's ``ssl`` module, ``fivetuple client``, and programs no
one here wrote: ``openssl s_client``, ``socat`` and ``curl`` (each test that
needs one is skipped when it is not installed). The certificates come from
the session's ``tls_files`` fixture: a CA, a server certificate for
localhost, 127.0.0.1 and ::1, one for other.example (SNI), an expired one,
client certificates signed by the CA and by another CA.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from helpers import CLIENT_TIMEOUT_S, CliServer, recv_exactly, run_cli, run_client

OPENSSL = shutil.which("openssl")
SOCAT = shutil.which("socat")
CURL = shutil.which("curl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
needs_socat = pytest.mark.skipif(SOCAT is None, reason="no socat command")
needs_curl = pytest.mark.skipif(CURL is None, reason="no curl command")
#: How long a peer program may take to finish its exchange.
PEER_TIMEOUT_S = 15.0


def serving(files: Any, *args: str, cert: str = "cert", key: str = "key") -> CliServer:
    """``fivetuple serve echo`` (or the app in ``args``) over TLS with a certificate of ``files``."""
    app = () if args and not args[0].startswith("-") else ("echo",)
    return CliServer(
        *app, *args, "--port", "0",
        "--tls-cert", getattr(files, cert), "--tls-key", getattr(files, key),
    )  # fmt: skip


def trusting(files: Any, **options: Any) -> ssl.SSLContext:
    """A client context that trusts the test CA; ``options`` set its attributes."""
    context = ssl.create_default_context(cafile=files.ca)
    for name, value in options.items():
        setattr(context, name, value)
    return context


@contextmanager
def dial(
    port: int, context: ssl.SSLContext, name: str | None = "localhost"
) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to 127.0.0.1:``port``, its handshake done, asking for ``name``."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S)
    with raw, context.wrap_socket(raw, server_hostname=name) as conn:  # raw: if the handshake fails
        yield conn


def echoes_over(conn: ssl.SSLSocket, data: bytes = b"ping\n") -> bool:
    conn.sendall(data)
    return recv_exactly(conn, len(data)) == data


def refused(*args: str) -> str:
    """Run ``fivetuple ARGS``: it must exit 2 with one error line, no traceback; the line."""
    result = run_cli(*args)
    lines = result.stderr.splitlines()
    assert (result.returncode, result.stdout, len(lines)) == (2, "", 1), result
    assert lines[0].startswith("fivetuple: error: ") and "Traceback" not in result.stderr
    return lines[0]


def next_line(stream: Any, containing: str) -> str:
    """The next line of a server's ``stream`` with ``containing`` in it (the test's
    timeout bounds the wait)."""
    for line in stream:
        if containing in line:
            return str(line)
    raise AssertionError(f"the stream ended without a line containing {containing!r}")


def peer(*command: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run a peer program to its end; stderr is merged into stdout."""
    return subprocess.run(
        command,
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=PEER_TIMEOUT_S,
        check=False,
    )


class SClient:
    """``openssl s_client`` to a port: sends a line, reads until it comes back or the end.

    Its whole output (the session details and the data on stdout, then its
    stderr) is ``output``; ``echoed`` says whether the line came back. stdout
    is read apart from stderr, where the two would interleave mid-line.
    """

    LINE = "hello over tls"

    def __init__(self, port: int, *args: str) -> None:
        assert OPENSSL is not None
        proc = subprocess.Popen(
            [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # a few lines: read once it has exited
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        lines: list[str] = []
        try:
            proc.stdin.write(self.LINE + "\n")
            proc.stdin.flush()
            for line in proc.stdout:  # ends when s_client exits (a failed handshake)
                lines.append(line)
                if self.LINE in line:  # (s_client does not print what it sends)
                    break
        finally:
            proc.kill()
            rest, err = proc.communicate(timeout=PEER_TIMEOUT_S)
        self.output = "".join(lines) + (rest or "") + (err or "")
        self.echoed = any(self.LINE in line for line in lines)


# -- serve --tls-cert/--tls-key ---------------------------------------------------


def test_serve_tls_banner_and_python_ssl_echo(tls_files: Any) -> None:
    with serving(tls_files) as server:
        assert re.match(r"listening on tls://127\.0\.0\.1:\d+ app=echo ", server.banner)
        assert server.port is not None
        with dial(server.port, trusting(tls_files)) as conn:
            assert echoes_over(conn)
            assert conn.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--tls-cert", "{missing}", "--tls-key", "{key}"), "--tls-cert {missing} does not exist"),
        (("--tls-cert", "{cert}", "--tls-key", "{other_key}"), "does not match"),
        (("--tls-cert", "{key}", "--tls-key", "{cert}"), "swap --tls-cert and --tls-key"),
        (("--tls-key", "{key}"), "--tls-key was given without --tls-cert"),
        (("--tls-alpn", "h2"), "--tls-alpn: TLS options, but no certificate"),
        (("--tls-cert", "{cert}", "--tls-key", "{key}", "--udp"), "DTLS"),
        (("--tls-self-signed", "--tls-cert", "{cert}"), "--tls-self-signed makes its own"),
        (("--tls-cert", "{cert}", "--tls-key", "{key}", "--admin-tls"), "--admin HOST:PORT"),
        (("--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-sni", "x.example"), "NAME=CERT"),
        (("--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{missing}"), "--tls-client-ca"),
    ],
)  # fmt: skip
def test_bad_tls_options_are_one_line_exit_2(
    tls_files: Any, tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    paths = {
        "cert": tls_files.cert,
        "key": tls_files.key,
        "other_key": tls_files.other_key,
        "missing": str(tmp_path / "missing.pem"),
    }
    line = refused("serve", "echo", "--port", "0", *(arg.format(**paths) for arg in args))
    assert says.format(**paths) in line


@needs_openssl
def test_self_signed_fingerprint_is_the_certificate_served_and_is_deleted_at_exit() -> None:
    with CliServer("echo", "--port", "0", "--tls-self-signed") as server:
        assert server.port is not None and server.proc.stderr is not None
        said = next_line(server.proc.stderr, "event=tls-self-signed")
        fingerprint = re.search(r"fingerprint=([0-9A-F:]{95})", said)
        assert fingerprint is not None, said
        hint = next_line(server.proc.stderr, "event=tls-connect")
        how = re.search(r"fivetuple client (tls://\S+) --ca (\S+) \(or --insecure\)", hint)
        assert how is not None and how[1] == server.address, hint
        anyone = ssl.create_default_context()
        anyone.check_hostname, anyone.verify_mode = False, ssl.CERT_NONE
        with dial(server.port, anyone) as conn:
            der = conn.getpeercert(binary_form=True)
        assert der is not None
        assert hashlib.sha256(der).digest().hex(":").upper() == fingerprint[1]
        # The hint works as printed: the certificate is its own CA.
        talk = run_client(how[1], "--ca", how[2], stdin=b"fingerprinted\n")
        assert talk.stdout == b"fingerprinted\n", talk.stderr
        assert b"certificate CN=localhost verified for 127.0.0.1" in talk.stderr
        trusting_anyone = run_client(how[1], "--insecure", stdin=b"anyway\n")
        assert trusting_anyone.stdout == b"anyway\n", trusting_anyone.stderr
        assert b"certificate not checked (--insecure)" in trusting_anyone.stderr
        assert os.path.exists(how[2])
        server.signal(signal.SIGTERM)
        assert server.wait()[0] == 0
    assert not os.path.exists(how[2])


def test_sni_picks_the_certificate_by_name(tls_files: Any) -> None:
    sni = f"other.example={tls_files.sni_cert},{tls_files.sni_key}"
    with serving(tls_files, "--tls-sni", sni) as server:
        assert server.port is not None
        for name in ("other.example", "localhost"):
            # Verifying the name proves which certificate came: each holds one.
            with dial(server.port, trusting(tls_files), name) as conn:
                assert echoes_over(conn)


def test_alpn_is_negotiated(tls_files: Any) -> None:
    with serving(tls_files, "--tls-alpn", "h2", "--tls-alpn", "http/1.1") as server:
        assert server.port is not None
        context = trusting(tls_files)
        context.set_alpn_protocols(["http/1.1", "h2"])
        with dial(server.port, context) as conn:
            assert conn.selected_alpn_protocol() == "h2"  # the server's preference
            assert echoes_over(conn)


def test_client_ca_refuses_a_client_without_certificate_and_accepts_one_with(
    tls_files: Any,
) -> None:
    with serving(tls_files, "--tls-client-ca", tls_files.ca) as server:
        assert server.port is not None
        alice = trusting(tls_files)
        alice.load_cert_chain(tls_files.client_cert, tls_files.client_key)
        with dial(server.port, alice) as conn:
            assert echoes_over(conn)
        # TLS 1.3: the client's handshake ends before the server has judged it;
        # the verdict is the alert that comes next.
        with (
            dial(server.port, trusting(tls_files)) as conn,
            pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"),
        ):
            conn.recv(1)


def test_min_version_1_3_refuses_a_tls_1_2_client(tls_files: Any) -> None:
    with serving(tls_files, "--tls-min-version", "1.3") as server:
        assert server.port is not None
        old = trusting(tls_files, maximum_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION"), dial(server.port, old):
            pass
        with dial(server.port, trusting(tls_files)) as conn:
            assert conn.version() == "TLSv1.3"


def test_handshake_timeout_closes_a_silent_client(tls_files: Any) -> None:
    with serving(tls_files, "--tls-handshake-timeout", "0.5") as server:
        assert server.port is not None
        # Silent: no ClientHello. The default (10 s) would outlast this socket's timeout.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5.0) as silent:
            assert silent.recv(1) == b""


def test_client_send_file_over_tls(tls_files: Any, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(1 << 20))
    with serving(tls_files) as server:
        talk = run_client(server.address, "--ca", tls_files.ca, "--send", str(data))
    assert talk.returncode == 0, talk.stderr
    assert talk.stdout.startswith(b"sent 1048576 bytes as one message; echo verified")


def test_codec_over_tls(tls_files: Any) -> None:
    with serving(tls_files, "--codec", "lines") as server:
        talk = run_client(
            server.address, "--codec", "lines", "--ca", tls_files.ca, stdin=b"one\ntwo\n"
        )
    assert (talk.returncode, talk.stdout) == (0, b"one\ntwo\n"), talk.stderr


def test_tls_over_a_unix_socket(tls_files: Any, tmp_path: Path) -> None:
    path = tmp_path / "tls.sock"
    if len(str(path)) > 100:
        pytest.skip(f"tmp_path too long for a Unix socket: {path}")
    with CliServer(
        "echo", "--unix", str(path), "--tls-cert", tls_files.cert, "--tls-key", tls_files.key
    ) as server:
        assert "tls=on" in server.banner
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(CLIENT_TIMEOUT_S)
            raw.connect(str(path))
            with trusting(tls_files).wrap_socket(raw, server_hostname="localhost") as conn:
                assert echoes_over(conn)


def test_workers_serve_tls(tls_files: Any) -> None:
    with serving(tls_files, "--workers", "2") as server:
        assert server.banner.startswith("listening on tls://") and "workers=2" in server.banner
        assert server.port is not None
        for _ in range(8):  # spread over both workers by the kernel (SO_REUSEPORT)
            with dial(server.port, trusting(tls_files)) as conn:
                assert echoes_over(conn)


def test_sighup_reload_serves_the_renewed_certificate(tls_files: Any, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(tls_files.cert, cert)
    shutil.copy(tls_files.key, key)
    with CliServer(
        "echo", "--port", "0", "--workers", "2", "--tls-cert", str(cert), "--tls-key", str(key)
    ) as server:
        assert server.port is not None and server.proc.stderr is not None
        with dial(server.port, trusting(tls_files), "localhost") as conn:
            assert echoes_over(conn)
        shutil.copy(tls_files.sni_cert, cert)  # renewed: now for other.example
        shutil.copy(tls_files.sni_key, key)
        server.signal(signal.SIGHUP)
        for _ in range(2):  # both workers of the old generation are gone
            next_line(server.proc.stderr, "event=worker-stop")
        with dial(server.port, trusting(tls_files), "other.example") as conn:
            assert echoes_over(conn)


def test_chat_over_tls_with_two_clients(tls_files: Any) -> None:
    with serving(tls_files, "chat") as server:
        assert server.port is not None
        with (
            dial(server.port, trusting(tls_files)) as alice,
            dial(server.port, trusting(tls_files)) as bob,
        ):
            alice_in, bob_in = alice.makefile("rb"), bob.makefile("rb")
            assert alice_in.readline().startswith(b"* welcome")
            assert bob_in.readline().startswith(b"* welcome")
            assert alice_in.readline().endswith(b" joined\n")
            bob.sendall(b"/nick bob\nhello alice\n")
            assert alice_in.readline().endswith(b" is now bob\n")
            assert alice_in.readline() == b"<bob> hello alice\n"
            alice_in.close()
            bob_in.close()


# -- fivetuple client tls:// ------------------------------------------------------


def test_client_tls_echoes_stdin_and_says_what_was_negotiated(tls_files: Any) -> None:
    with serving(tls_files, "--tls-alpn", "h2") as server:
        talk = run_client(server.address, "--ca", tls_files.ca, "--alpn", "h2", stdin=b"a\nb\n")
    assert (talk.returncode, talk.stdout) == (0, b"a\nb\n"), talk.stderr
    said = talk.stderr.decode()
    assert said.startswith(f"connected to {server.address}: TLSv1.3, TLS_"), said
    assert "ALPN h2" in said and "verified for 127.0.0.1" in said


@pytest.mark.parametrize(
    ("cert", "args", "says"),
    [
        ("cert", (), "unable to get local issuer certificate"),
        ("cert", ("--ca", "{ca}", "--sni", "other.example"), "Hostname mismatch"),
        ("expired_cert", ("--ca", "{ca}"), "certificate has expired"),
        ("other_cert", ("--ca", "{ca}"), "--ca FILE"),
    ],
)
def test_client_verification_failure_is_one_line_exit_2(
    tls_files: Any, cert: str, args: tuple[str, ...], says: str
) -> None:
    key = cert.replace("cert", "key")
    with serving(tls_files, cert=cert, key=key) as server:
        options = (arg.format(ca=tls_files.ca) for arg in args)
        talk = run_client(server.address, *options, stdin=b"never sent\n")
    err = talk.stderr.decode()
    assert (talk.returncode, talk.stdout, err.count("\n")) == (2, b"", 1), err
    assert err.startswith(f"fivetuple: error: cannot trust the certificate of {server.address}")
    assert says in err


def test_client_tls_to_a_plain_server_is_one_line_exit_2() -> None:
    with CliServer("echo", "--port", "0") as server:
        talk = run_client(f"tls://127.0.0.1:{server.port}", "--insecure", stdin=b"x\n")
    err = talk.stderr.decode()
    assert (talk.returncode, err.count("\n")) == (2, 1), err
    assert "is it a TLS server? " in err


def test_client_mutual_tls(tls_files: Any) -> None:
    with serving(tls_files, "--tls-client-ca", tls_files.ca) as server:
        ca = ("--ca", tls_files.ca)
        mine = ("--cert", tls_files.client_cert, "--key", tls_files.client_key)
        ok = run_client(server.address, *ca, *mine, stdin=b"me\n")
        assert (ok.returncode, ok.stdout) == (0, b"me\n"), ok.stderr
        bare = run_client(server.address, *ca, stdin=b"me\n")
        stranger = ("--cert", tls_files.stranger_cert, "--key", tls_files.stranger_key)
        strange = run_client(server.address, *ca, *stranger, stdin=b"me\n")
    assert bare.returncode == 2 and b"--cert FILE --key FILE" in bare.stderr, bare.stderr
    assert strange.returncode == 2 and b"UNKNOWN_CA" in strange.stderr, strange.stderr


def test_client_tls_options_need_a_tls_target() -> None:
    line = refused("client", "tcp://127.0.0.1:9", "--ca", "ca.pem", "--insecure")
    assert "--insecure, --ca: TLS options, for a tls:// target" in line


# -- the admin endpoint over TLS ----------------------------------------------------


@needs_curl
def test_admin_over_tls_with_curl_and_the_tls_columns(tls_files: Any) -> None:
    assert CURL is not None
    with serving(tls_files, "--tls-alpn", "h2", "--admin", "127.0.0.1:0", "--admin-tls") as server:
        assert server.port is not None and server.proc.stdout is not None
        admin = server.proc.stdout.readline().split()[-1]
        assert admin.startswith("https://127.0.0.1:")
        context = trusting(tls_files)
        context.set_alpn_protocols(["h2"])
        with dial(server.port, context) as conn:
            assert echoes_over(conn)
            curl = [CURL, "--silent", "--show-error", "--fail", "--cacert", tls_files.ca]
            stats = json.loads(peer(*curl, f"{admin}/stats").stdout)
            assert stats["listeners"][0]["address"] == server.address
            (row,) = json.loads(peer(*curl, f"{admin}/connections").stdout)["connections"]
            tls = row["tls"]
            assert tls["handshake_done"] and tls["version"] == conn.version()
            assert (tls["alpn"], tls["sni"], tls["peer_cert"]) == ("h2", "localhost", None)
            assert tls["cipher"] == conn.cipher()[0]  # type: ignore[index]
            table = run_cli("conns", admin, "--ca", tls_files.ca)
            assert table.returncode == 0, table.stderr
            head, line = table.stdout.splitlines()[:2]
            assert head.split()[-7:] == ["codec", "tls", "cipher", "alpn", "sni", "peer", "cert"]
            assert line.split()[-5:] == ["1.3", tls["cipher"], "h2", "localhost", "-"]
        plain = refused("conns", admin.removeprefix("https://"))
        assert "https://HOST:PORT" in plain
        untrusted = refused("conns", admin)
        assert "cannot trust the admin endpoint" in untrusted


def test_admin_tls_with_workers_gathers_rows(tls_files: Any) -> None:
    with serving(tls_files, "--workers", "2", "--admin", "127.0.0.1:0", "--admin-tls") as server:
        assert server.port is not None and server.proc.stdout is not None
        admin = server.proc.stdout.readline().split()[-1]
        with dial(server.port, trusting(tls_files)) as conn:
            assert echoes_over(conn)
            table = run_cli("conns", admin, "--ca", tls_files.ca, "--json")
        assert table.returncode == 0, table.stderr
        (row,) = json.loads(table.stdout)["connections"]
        assert "worker" in row and row["tls"]["sni"] == "localhost"


def test_conns_tls_options_need_an_https_address() -> None:
    assert "apply to an https:// admin address" in refused("conns", "127.0.0.1:9", "--insecure")


# -- peers no one here wrote --------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_sni_alpn_and_versions(tls_files: Any, version: str) -> None:
    sni = f"other.example={tls_files.sni_cert},{tls_files.sni_key}"
    with serving(tls_files, "--tls-sni", sni, "--tls-alpn", "h2") as server:
        assert server.port is not None
        session = SClient(
            server.port, version, "-servername", "other.example", "-alpn", "h2",
            "-CAfile", tls_files.ca, "-verify_hostname", "other.example", "-verify_return_error",
        )  # fmt: skip
    assert session.echoed, session.output
    assert f"TLSv1.{version[-1]}" in session.output
    assert "ALPN protocol: h2" in session.output
    assert "Verify return code: 0 (ok)" in session.output


@needs_openssl
def test_openssl_s_client_mutual_tls(tls_files: Any) -> None:
    with serving(tls_files, "--tls-client-ca", tls_files.ca) as server:
        assert server.port is not None
        ca = ("-CAfile", tls_files.ca, "-verify_return_error")
        mine = ("-cert", tls_files.client_cert, "-key", tls_files.client_key)
        with_cert = SClient(server.port, *ca, *mine)
        without = SClient(server.port, *ca)
        stranger = SClient(
            server.port, *ca, "-cert", tls_files.stranger_cert, "-key", tls_files.stranger_key
        )
    assert with_cert.echoed, with_cert.output
    assert not without.echoed and "certificate required" in without.output, without.output
    assert not stranger.echoed and "unknown ca" in stranger.output, stranger.output


@needs_socat
def test_socat_openssl_echo_client(tls_files: Any) -> None:
    assert SOCAT is not None
    with serving(tls_files) as server:
        assert server.port is not None
        done = peer(
            SOCAT, "-t", "5", "-", f"OPENSSL:127.0.0.1:{server.port},cafile={tls_files.ca}",
            stdin=b"one\ntwo\n",
        )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"one\ntwo\n")
