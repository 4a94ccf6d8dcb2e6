"""``fivetuple bench`` over ``tls://`` (issue 15): echo, hold and connect
against an in-process TLS echo server on loopback.

No timing is asserted: only that what the report says is what happened
(verified echoes, handshakes counted, failures by reason, sessions resumed).
"""

from __future__ import annotations

import json
from typing import Any

from fivetuple._tls_context import server_context
from fivetuple.apps import make_app
from helpers import TLSFiles, port_of, run_cli, running_server

TLS_KEYS = {
    "versions", "ciphers", "alpn", "handshakes", "handshake_us", "handshakes_per_s",
    "handshake_failures", "resume", "resume_offered", "resumed", "resume_note",
}  # fmt: skip


def bench(port: int, *args: str, timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """``fivetuple bench ARGS tls://127.0.0.1:PORT --json``: (exit status, report)."""
    done = run_cli("bench", *args, f"tls://127.0.0.1:{port}", "--json", timeout=timeout)
    assert done.stdout.strip(), done.stderr
    report = json.loads(done.stdout)
    assert set(report["tls"]) == TLS_KEYS
    return done.returncode, report


def test_echo_over_tls_is_verified_and_reports_the_handshakes(tls_files: TLSFiles) -> None:
    ctx = server_context(tls_files.cert, tls_files.key)
    with running_server(make_app("echo"), tls=ctx) as server:
        status, report = bench(
            port_of(server), "--conns", "10", "--duration", "0.5", "--pipeline", "2",
            "--ca", tls_files.ca, "--sni", "localhost",
        )  # fmt: skip
    assert status == 0, report
    assert report["protocol"] == "tls"
    assert report["connections"] == {"attempted": 10, "established": 10, "failed": {}, "lost": {}}
    assert report["round_trips"] > 0 and report["error_count"] == 0
    tls = report["tls"]
    assert tls["versions"] == {"TLSv1.3": 10} and sum(tls["ciphers"].values()) == 10
    assert tls["handshakes"] == 10 and tls["handshake_failures"] == {}
    assert 0 < tls["handshake_us"]["p50"] <= tls["handshake_us"]["max"]
    assert tls["handshakes_per_s"] is None and tls["resumed"] == 0


def test_an_untrusted_certificate_fails_every_connection_with_the_reason(
    tls_files: TLSFiles,
) -> None:
    """The server's certificate is signed by a CA the load does not trust."""
    ctx = server_context(tls_files.other_cert, tls_files.other_key)
    with running_server(make_app("echo"), tls=ctx) as server:
        port = port_of(server)
        status, report = bench(port, "--conns", "4", "--duration", "0.5", "--ca", tls_files.ca)
        text = run_cli(
            "bench", f"tls://127.0.0.1:{port}", "--conns", "2", "--duration", "0.5",
            "--ca", tls_files.ca,
        )  # fmt: skip
    assert status == 1
    reason = "tls-certificate-verify-failed"
    assert report["connections"]["failed"] == {reason: 4}
    assert report["connections"]["established"] == 0
    failure = report["tls"]["handshake_failures"][reason]
    assert failure["count"] == 4 and "certificate verify failed" in failure["detail"]
    assert text.returncode == 1 and reason in text.stdout
    assert "Traceback" not in text.stderr and "TLS connection" not in text.stderr


def test_connect_mode_counts_full_handshakes_each_echoed(tls_files: TLSFiles) -> None:
    ctx = server_context(tls_files.cert, tls_files.key)
    with running_server(make_app("echo"), tls=ctx) as server:
        status, report = bench(
            port_of(server), "connect", "--conns", "4", "--duration", "0.5", "--ca", tls_files.ca
        )
    assert status == 0, report
    assert report["connections"]["failed"] == {} and report["error_count"] == 0
    tls = report["tls"]
    assert tls["handshakes_per_s"] > 0 and tls["handshakes_per_s"] == report["connects_per_s"]
    assert tls["handshakes"] >= report["connections"]["established"] > 0
    assert tls["resume"] is False and tls["resumed"] == 0


def test_connect_mode_against_a_server_that_never_answers_fails(tls_files: TLSFiles) -> None:
    """A plain TCP server that reads and says nothing: no handshake ends, and
    the ones under way at the end (--timeout after --duration) are failures."""
    with running_server(make_app("discard")) as server:
        status, report = bench(
            port_of(server), "connect", "--conns", "2", "--duration", "0.3", "--timeout", "0.3",
            "--ca", tls_files.ca,
        )  # fmt: skip
    assert status == 1
    assert report["connections"]["failed"] == {"tls-unfinished": 2}
    assert report["tls"]["handshake_failures"]["tls-unfinished"]["count"] == 2
    assert report["tls"]["handshakes"] == 0


def test_tls_resume_resumes_sessions_from_tls13_tickets(tls_files: TLSFiles) -> None:
    ctx = server_context(tls_files.cert, tls_files.key)
    with running_server(make_app("echo"), tls=ctx) as server:
        status, report = bench(
            port_of(server), "connect", "--conns", "2", "--duration", "0.5",
            "--ca", tls_files.ca, "--tls-resume",
        )  # fmt: skip
    assert status == 0, report
    tls = report["tls"]
    assert tls["resume"] is True and tls["resume_note"] is None
    # Only the first connection of each slot has no session to offer.
    assert 0 < tls["resumed"] <= tls["resume_offered"] < tls["handshakes"]


def test_tls_resume_against_a_server_without_tickets_says_why(tls_files: TLSFiles) -> None:
    ctx = server_context(tls_files.cert, tls_files.key)
    # No TLS 1.3 ticket at all (OP_NO_TICKET would only make them stateful).
    ctx.num_tickets = 0
    with running_server(make_app("echo"), tls=ctx) as server:
        status, report = bench(
            port_of(server), "connect", "--conns", "2", "--duration", "0.3",
            "--ca", tls_files.ca, "--tls-resume",
        )  # fmt: skip
    assert status == 0, report
    tls = report["tls"]
    assert tls["resumed"] == 0 and tls["handshakes"] > 0
    assert "ticket" in tls["resume_note"]


def test_hold_over_tls(tls_files: TLSFiles) -> None:
    ctx = server_context(tls_files.cert, tls_files.key)
    with running_server(make_app("echo"), tls=ctx) as server:
        status, report = bench(
            port_of(server), "hold", "--conns", "20", "--duration", "0.5", "--ca", tls_files.ca
        )
    assert status == 0, report
    assert report["hold"] == {"held": 20, "still_up": 20}
    assert report["tls"]["handshakes"] == 20


def test_mutual_tls_with_and_without_the_client_certificate(tls_files: TLSFiles) -> None:
    """Without one, the TLS 1.3 client is done first and the server refuses
    after: connect mode, which waits for an echo, counts a failed handshake."""
    ctx = server_context(tls_files.cert, tls_files.key, client_ca=tls_files.ca)
    with running_server(make_app("echo"), tls=ctx) as server:
        port = port_of(server)
        status, report = bench(
            port, "--conns", "2", "--duration", "0.3", "--ca", tls_files.ca,
            "--cert", tls_files.client_cert, "--key", tls_files.client_key,
        )  # fmt: skip
        refused, without = bench(
            port, "connect", "--conns", "2", "--duration", "0.3", "--ca", tls_files.ca
        )
    assert status == 0, report
    assert report["round_trips"] > 0 and report["connections"]["established"] == 2
    assert refused == 1
    failed = without["connections"]["failed"]
    assert set(failed) == {"tls-error"} and without["connections"]["established"] == 0
    assert without["tls"]["handshake_failures"]["tls-error"]["count"] == failed["tls-error"]


def test_tls_options_on_a_tcp_target_are_one_line_and_exit_2() -> None:
    for args in (["--insecure"], ["--sni", "localhost", "--tls-resume"], ["--alpn", "h2"]):
        done = run_cli("bench", "connect", "tcp://127.0.0.1:9", *args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "tls://" in done.stderr and args[0] in done.stderr


def test_bad_tls_setups_are_one_line_and_exit_2(tls_files: TLSFiles) -> None:
    cases = [
        (["--ca", "/nonexistent/ca.pem"], "--ca"),
        (["--insecure", "--ca", tls_files.ca], "--insecure"),
        (["--tls-resume"], "bench connect"),
    ]
    for args, words in cases:
        done = run_cli("bench", "tls://127.0.0.1:9", *args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
