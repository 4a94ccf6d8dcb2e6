"""TLS contexts from options (``_tls_context``): handshakes, SNI, ALPN, mutual TLS, errors.

A handshake is the subject of most tests here, so they make one: a client and
a server ``SSLObject`` pumped into each other through memory BIOs
(``helpers.tls_handshake``), no socket. The certificates come from trustme
(``tls_files``); the throwaway one from the ``openssl`` command, as the
server makes it. Every person's mistake must be one ``SetupError`` line that
names the file and the option as a ``{param}`` placeholder.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from fivetuple import _tls_context
from fivetuple._tls_context import (
    client_context,
    fingerprint,
    parse_sni_spec,
    self_signed,
    server_context,
    sni_name,
)
from fivetuple.errors import SetupError
from helpers import CLIENT_TIMEOUT_S, TLSFiles, recv_exactly, tls_handshake


def der_of(path: str) -> bytes:
    """The DER of the first certificate in a PEM file."""
    return ssl.PEM_cert_to_DER_cert(Path(path).read_text())


def peer_der(conn: ssl.SSLObject) -> bytes:
    der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


def setup_error(build: Callable[[], Any]) -> SetupError:
    """The SetupError ``build`` raises, checked to be one line."""
    with pytest.raises(SetupError) as caught:
        build()
    error = caught.value
    assert "\n" not in str(error), str(error)
    assert "Traceback" not in str(error)
    return error


def assert_names(error: SetupError, param: str, *fragments: str) -> None:
    """``error`` names ``param`` as a placeholder a CLI can rename, and every fragment."""
    assert param in error.params, (error.params, str(error))
    assert "{" + param + "}" in error.template
    flag = "--" + param.replace("_", "-")
    assert flag in error.naming({param: flag})
    for fragment in fragments:
        assert fragment in str(error), (fragment, str(error))


# -- handshakes -------------------------------------------------------------------


def test_tls13_handshake_verifies_the_server(tls_files: TLSFiles) -> None:
    server_ctx = server_context(tls_files.cert, tls_files.key)
    client, server = tls_handshake(client_context(ca=tls_files.ca), server_ctx)
    assert client.version() == server.version() == "TLSv1.3"
    assert peer_der(client) == der_of(tls_files.cert)
    assert server.getpeercert() is None  # no client certificate was asked for
    for host in ("127.0.0.1", "::1"):
        client, server = tls_handshake(client_context(ca=tls_files.ca), server_ctx, host)
        assert client.version() == "TLSv1.3"


def test_server_context_settings(tls_files: TLSFiles) -> None:
    ctx = server_context(tls_files.cert, tls_files.key)
    assert ctx.protocol == ssl.PROTOCOL_TLS_SERVER
    # OP_SINGLE_ECDH_USE is 0 (always on) since OpenSSL 1.1; the others are bits.
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_SINGLE_ECDH_USE, ssl.OP_NO_RENEGOTIATION):
        assert ctx.options & option == option, option
    assert ssl.OP_NO_RENEGOTIATION and ssl.OP_NO_COMPRESSION
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.sni_callback is not None
    assert (
        server_context(tls_files.cert, tls_files.key, min_version="1.3").minimum_version
        == ssl.TLSVersion.TLSv1_3
    )


def test_key_may_sit_in_the_certificate_file(tls_files: TLSFiles, tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(Path(tls_files.key).read_bytes() + Path(tls_files.cert).read_bytes())
    client, _ = tls_handshake(client_context(ca=tls_files.ca), server_context(str(both), None))
    assert peer_der(client) == der_of(tls_files.cert)


def test_min_version_13_refuses_a_12_only_client(tls_files: TLSFiles) -> None:
    old = client_context(ca=tls_files.ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    client, _ = tls_handshake(old, server_context(tls_files.cert, tls_files.key))
    assert client.version() == "TLSv1.2"  # the default server takes it
    strict = server_context(tls_files.cert, tls_files.key, min_version="1.3")
    with pytest.raises(ssl.SSLError, match=r"(?i)unsupported protocol|version"):
        tls_handshake(old, strict)


def test_client_min_version(tls_files: TLSFiles) -> None:
    server_ctx = server_context(tls_files.cert, tls_files.key)
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert tls_handshake(client_context(ca=tls_files.ca), server_ctx)[0].version() == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        tls_handshake(client_context(ca=tls_files.ca, min_version="1.3"), server_ctx)


def test_alpn_is_negotiated_in_the_servers_order(tls_files: TLSFiles) -> None:
    server_ctx = server_context(tls_files.cert, tls_files.key, alpn=["h2", "http/1.1"])
    client_ctx = client_context(ca=tls_files.ca, alpn=["http/1.1", "h2"])
    client, server = tls_handshake(client_ctx, server_ctx)
    assert client.selected_alpn_protocol() == server.selected_alpn_protocol() == "h2"
    only_11 = client_context(ca=tls_files.ca, alpn=["http/1.1"])
    assert tls_handshake(only_11, server_ctx)[1].selected_alpn_protocol() == "http/1.1"
    # No protocol in common: no ALPN, and the handshake still completes.
    stranger = client_context(ca=tls_files.ca, alpn=["x-fivetuple"])
    assert tls_handshake(stranger, server_ctx)[0].selected_alpn_protocol() is None


# -- SNI --------------------------------------------------------------------------------


@pytest.fixture
def sni_server(tls_files: TLSFiles) -> ssl.SSLContext:
    return server_context(
        tls_files.cert,
        tls_files.key,
        sni={"other.example": (tls_files.sni_cert, tls_files.sni_key)},
        alpn=["h2"],
    )


def test_sni_picks_the_certificate_for_the_name(
    tls_files: TLSFiles, sni_server: ssl.SSLContext
) -> None:
    # The client checks the name: the default certificate (localhost) would fail.
    for asked in ("other.example", "OTHER.Example"):
        client, server = tls_handshake(client_context(ca=tls_files.ca), sni_server, asked)
        assert peer_der(client) == der_of(tls_files.sni_cert)
        assert sni_name(server) == asked
        # The SNI context has the same settings: ALPN still works after the switch.
        assert client.selected_alpn_protocol() is None
    client_ctx = client_context(ca=tls_files.ca, alpn=["h2"])
    client, _ = tls_handshake(client_ctx, sni_server, "other.example")
    assert client.selected_alpn_protocol() == "h2"


def test_sni_default_certificate_otherwise(tls_files: TLSFiles, sni_server: ssl.SSLContext) -> None:
    client, server = tls_handshake(client_context(ca=tls_files.ca), sni_server, "localhost")
    assert peer_der(client) == der_of(tls_files.cert)
    assert sni_name(server) == "localhost"
    unknown = client_context(ca=tls_files.ca)
    unknown.check_hostname = False
    client, server = tls_handshake(unknown, sni_server, "nobody.example")
    assert peer_der(client) == der_of(tls_files.cert)
    assert sni_name(server) == "nobody.example"
    # An address is not sent as SNI: no name, the default certificate.
    client, server = tls_handshake(client_context(ca=tls_files.ca), sni_server, "127.0.0.1")
    assert peer_der(client) == der_of(tls_files.cert)
    assert sni_name(server) is None


def test_sni_name_is_recorded_without_sni_certificates(tls_files: TLSFiles) -> None:
    server_ctx = server_context(tls_files.cert, tls_files.key)
    fresh = server_ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert sni_name(fresh) is None
    _, server = tls_handshake(client_context(ca=tls_files.ca), server_ctx, "localhost")
    assert sni_name(server) == "localhost"


def test_sni_name_on_an_sslsocket(tls_files: TLSFiles) -> None:
    # The other way to run TLS: SSLSocket on the descriptor (docs/tls.md compares).
    server_ctx = server_context(tls_files.cert, tls_files.key)
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(CLIENT_TIMEOUT_S)
        b.settimeout(CLIENT_TIMEOUT_S)
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                with server_ctx.wrap_socket(b, server_side=True) as tls:
                    tls.sendall((sni_name(tls) or "none").encode())
            except BaseException as exc:  # surfaced in the test thread
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_ctx = client_context(ca=tls_files.ca)
        with client_ctx.wrap_socket(a, server_hostname="localhost") as tls:
            assert recv_exactly(tls, len(b"localhost")) == b"localhost"
        thread.join(CLIENT_TIMEOUT_S)
        assert not errors, errors


def test_sni_wildcard_matches_one_label(tls_files: TLSFiles) -> None:
    server_ctx = server_context(
        tls_files.cert, tls_files.key, sni={"*.EXAMPLE": (tls_files.sni_cert, tls_files.sni_key)}
    )
    client_ctx = client_context(ca=tls_files.ca)
    client_ctx.check_hostname = False
    for asked, expected in [
        ("other.example", tls_files.sni_cert),
        ("a.other.example", tls_files.cert),
        ("example", tls_files.cert),
    ]:
        client, server = tls_handshake(client_ctx, server_ctx, asked)
        assert peer_der(client) == der_of(expected), asked
        assert sni_name(server) == asked


def test_sni_exact_name_wins_over_wildcard(tls_files: TLSFiles) -> None:
    server_ctx = server_context(
        tls_files.cert,
        tls_files.key,
        sni={
            "*.example": (tls_files.other_cert, tls_files.other_key),
            "other.example": (tls_files.sni_cert, tls_files.sni_key),
        },
    )
    client, _ = tls_handshake(client_context(ca=tls_files.ca), server_ctx, "other.example")
    assert peer_der(client) == der_of(tls_files.sni_cert)


def test_parse_sni_spec() -> None:
    assert parse_sni_spec("other.example=a.pem,b.pem") == ("other.example", ("a.pem", "b.pem"))
    assert parse_sni_spec("*.example=both.pem") == ("*.example", ("both.pem", "both.pem"))
    assert parse_sni_spec("x.example=dir,1/cert.pem,key.pem") == (
        "x.example",
        ("dir,1/cert.pem", "key.pem"),
    )


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("other.example", "'other.example' is not NAME=CERT,KEY"),
        ("=a.pem,b.pem", "is not NAME=CERT,KEY"),
        ("other.example=", "is not NAME=CERT,KEY"),
        ("other.example=,key.pem", "is not NAME=CERT,KEY"),
        ("other.example=cert.pem,", "is not NAME=CERT,KEY"),
        ("bad name=a.pem,b.pem", "'bad name' is not a server name"),
        ("a.*.example=a.pem,b.pem", "is not a server name"),
        ("a..example=a.pem,b.pem", "is not a server name"),
        ("127.0.0.1=a.pem,b.pem", "127.0.0.1 is an address"),
    ],
)
def test_parse_sni_spec_errors(spec: str, fragment: str) -> None:
    assert_names(setup_error(lambda: parse_sni_spec(spec)), "tls_sni", fragment)


# -- mutual TLS and verification ------------------------------------------------------


@pytest.fixture
def mtls_server(tls_files: TLSFiles) -> ssl.SSLContext:
    return server_context(tls_files.cert, tls_files.key, client_ca=tls_files.ca)


def test_client_ca_accepts_alice(tls_files: TLSFiles, mtls_server: ssl.SSLContext) -> None:
    assert mtls_server.verify_mode == ssl.CERT_REQUIRED
    alice = client_context(ca=tls_files.ca, cert=tls_files.client_cert, key=tls_files.client_key)
    _, server = tls_handshake(alice, mtls_server)
    peer = server.getpeercert()
    assert peer is not None
    assert (("commonName", "alice"),) in peer["subject"]


def test_client_ca_refuses_a_client_without_certificate(
    tls_files: TLSFiles, mtls_server: ssl.SSLContext
) -> None:
    with pytest.raises(ssl.SSLError, match=r"(?i)did not return a certificate"):
        tls_handshake(client_context(ca=tls_files.ca), mtls_server)


def test_client_ca_refuses_a_client_of_another_ca(
    tls_files: TLSFiles, mtls_server: ssl.SSLContext
) -> None:
    mallory = client_context(
        ca=tls_files.ca, cert=tls_files.stranger_cert, key=tls_files.stranger_key
    )
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        tls_handshake(mallory, mtls_server)
    assert "issuer certificate" in caught.value.verify_message


def test_expired_certificate_fails_client_verification(tls_files: TLSFiles) -> None:
    expired = server_context(tls_files.expired_cert, tls_files.expired_key)
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        tls_handshake(client_context(ca=tls_files.ca), expired)
    assert "expired" in caught.value.verify_message


def test_certificate_of_another_ca_fails_unless_insecure(tls_files: TLSFiles) -> None:
    other = server_context(tls_files.other_cert, tls_files.other_key)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(client_context(ca=tls_files.ca), other)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(client_context(), other)  # the system's CAs do not know trustme's
    insecure = client_context(insecure=True)
    assert not insecure.check_hostname
    assert insecure.verify_mode == ssl.CERT_NONE
    client, _ = tls_handshake(insecure, other, "wrong.example")
    assert peer_der(client) == der_of(tls_files.other_cert)


def test_wrong_name_fails_client_verification(tls_files: TLSFiles) -> None:
    server_ctx = server_context(tls_files.cert, tls_files.key)
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        tls_handshake(client_context(ca=tls_files.ca), server_ctx, "other.example")
    assert "mismatch" in caught.value.verify_message.lower()


# -- a person's mistakes: one line, the file, the option ----------------------------------


@pytest.fixture
def bad(tls_files: TLSFiles, tmp_path: Path) -> dict[str, str]:
    """Files that are wrong in one way each."""
    key = serialization.load_pem_private_key(Path(tls_files.key).read_bytes(), None)
    files = {
        "junk": b"hello, I am not a certificate\n",
        "der": der_of(tls_files.cert),
        "damaged": b"-----BEGIN CERTIFICATE-----\nMIIB@@@!!\n-----END CERTIFICATE-----\n",
        "pkcs8-locked": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        "legacy-locked": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    }
    paths = {"missing": str(tmp_path / "missing.pem"), "directory": str(tmp_path)}
    for name, data in files.items():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = str(path)
    return paths


def test_cert_missing(tls_files: TLSFiles, bad: dict[str, str]) -> None:
    error = setup_error(lambda: server_context(bad["missing"], tls_files.key))
    assert_names(error, "tls_cert", bad["missing"], "does not exist")


def test_key_missing(tls_files: TLSFiles, bad: dict[str, str]) -> None:
    error = setup_error(lambda: server_context(tls_files.cert, bad["missing"]))
    assert_names(error, "tls_key", bad["missing"], "does not exist")


def test_cert_is_a_directory(tls_files: TLSFiles, bad: dict[str, str]) -> None:
    error = setup_error(lambda: server_context(bad["directory"], tls_files.key))
    assert_names(error, "tls_cert", bad["directory"], "is a directory")


@pytest.mark.parametrize("which", ["cert", "key"])
def test_unreadable_file(tls_files: TLSFiles, which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 000 does not stop root (CI runs as root): fail the open instead.
    target = getattr(tls_files, which)

    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if path == target:
            raise PermissionError(13, "Permission denied", path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(_tls_context, "open", refusing_open, raising=False)
    error = setup_error(lambda: server_context(tls_files.cert, tls_files.key))
    assert_names(error, f"tls_{which}", target, "permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_by_mode(tls_files: TLSFiles, tmp_path: Path) -> None:
    locked = tmp_path / "locked.pem"
    locked.write_bytes(Path(tls_files.cert).read_bytes())
    locked.chmod(0)
    error = setup_error(lambda: server_context(str(locked), tls_files.key))
    assert_names(error, "tls_cert", str(locked), "permission denied")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("junk", "holds no PEM certificate"),
        ("der", "is DER (binary), not PEM; convert it: openssl x509 -inform der"),
        ("damaged", "damaged certificate"),
    ],
)
def test_cert_not_pem(tls_files: TLSFiles, bad: dict[str, str], name: str, fragment: str) -> None:
    error = setup_error(lambda: server_context(bad[name], tls_files.key))
    assert_names(error, "tls_cert", bad[name], fragment)


def test_cert_and_key_swapped(tls_files: TLSFiles) -> None:
    error = setup_error(lambda: server_context(tls_files.key, tls_files.cert))
    assert_names(error, "tls_cert", tls_files.key, "did you swap")
    assert "tls_key" in error.params


def test_key_not_given_and_not_in_the_certificate(tls_files: TLSFiles) -> None:
    error = setup_error(lambda: server_context(tls_files.cert, None))
    assert_names(error, "tls_key", tls_files.cert, "holds no private key")
    assert "tls_cert" in error.params


def test_key_file_holds_no_key(tls_files: TLSFiles, bad: dict[str, str]) -> None:
    error = setup_error(lambda: server_context(tls_files.cert, bad["junk"]))
    assert_names(error, "tls_key", bad["junk"], "no PEM private key")
    error = setup_error(lambda: server_context(tls_files.cert, tls_files.ca))
    assert_names(error, "tls_key", tls_files.ca, "no PEM private key")


def test_key_does_not_match_the_certificate(tls_files: TLSFiles) -> None:
    error = setup_error(lambda: server_context(tls_files.cert, tls_files.other_key))
    assert_names(error, "tls_key", tls_files.other_key, tls_files.cert, "does not match")
    assert "tls_cert" in error.params


@pytest.mark.parametrize("name", ["pkcs8-locked", "legacy-locked"])
def test_encrypted_key(tls_files: TLSFiles, bad: dict[str, str], name: str) -> None:
    error = setup_error(lambda: server_context(tls_files.cert, bad[name]))
    assert_names(error, "tls_key", bad[name], "the private key is encrypted", "openssl pkey")


def test_encrypted_key_never_prompts(
    tls_files: TLSFiles, bad: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past our own check, OpenSSL asks the password callback, never the terminal.
    monkeypatch.setattr(_tls_context, "_encrypted", lambda label, body: False)
    error = setup_error(lambda: server_context(tls_files.cert, bad["legacy-locked"]))
    assert_names(error, "tls_key", bad["legacy-locked"], "the private key is encrypted")


def test_sni_entry_errors_name_the_server_name(tls_files: TLSFiles, bad: dict[str, str]) -> None:
    error = setup_error(
        lambda: server_context(
            tls_files.cert, tls_files.key, sni={"other.example": (bad["missing"], tls_files.key)}
        )
    )
    assert_names(error, "tls_sni", "other.example", bad["missing"], "does not exist")
    error = setup_error(
        lambda: server_context(
            tls_files.cert,
            tls_files.key,
            sni={"other.example": (tls_files.sni_cert, tls_files.key)},
        )
    )
    assert_names(error, "tls_sni", "other.example", tls_files.sni_cert, "does not match")
    swapped = {"other.example": (tls_files.sni_key, tls_files.sni_cert)}
    error = setup_error(lambda: server_context(tls_files.cert, tls_files.key, sni=swapped))
    assert_names(error, "tls_sni", "other.example", "did you swap the certificate and the key")


def test_sni_names_must_be_names_and_distinct(tls_files: TLSFiles) -> None:
    pair = (tls_files.sni_cert, tls_files.sni_key)
    error = setup_error(
        lambda: server_context(
            tls_files.cert, tls_files.key, sni={"A.example": pair, "a.example": pair}
        )
    )
    assert_names(error, "tls_sni", "twice")
    error = setup_error(lambda: server_context(tls_files.cert, tls_files.key, sni={"a b": pair}))
    assert_names(error, "tls_sni", "'a b' is not a server name")


@pytest.mark.parametrize("name", ["missing", "junk", "der"])
def test_bad_client_ca(tls_files: TLSFiles, bad: dict[str, str], name: str) -> None:
    error = setup_error(lambda: server_context(tls_files.cert, tls_files.key, client_ca=bad[name]))
    assert_names(error, "tls_client_ca", bad[name])


@pytest.mark.parametrize("name", ["missing", "junk"])
def test_bad_client_trust_file(bad: dict[str, str], name: str) -> None:
    assert_names(setup_error(lambda: client_context(ca=bad[name])), "ca", bad[name])


def test_bad_client_certificate(tls_files: TLSFiles, bad: dict[str, str]) -> None:
    error = setup_error(lambda: client_context(cert=bad["missing"], key=tls_files.client_key))
    assert_names(error, "cert", bad["missing"])
    error = setup_error(lambda: client_context(cert=tls_files.client_cert, key=tls_files.key))
    assert_names(error, "key", tls_files.key, "does not match")
    error = setup_error(lambda: client_context(key=tls_files.client_key))
    assert_names(error, "cert", "without")


def test_insecure_with_ca_is_a_contradiction(tls_files: TLSFiles) -> None:
    error = setup_error(lambda: client_context(insecure=True, ca=tls_files.ca))
    assert_names(error, "insecure", "ignored")
    assert "ca" in error.params


def test_bad_versions_and_protocols(tls_files: TLSFiles) -> None:
    pair = (tls_files.cert, tls_files.key)
    assert_names(
        setup_error(lambda: server_context(*pair, min_version="1.1")),
        "tls_min_version",
        "1.2 or 1.3, not '1.1'",
    )
    assert_names(setup_error(lambda: client_context(min_version="TLSv1.3")), "min_version")
    for protocol in ("", "x" * 256, "h 2", "h\u00e9"):
        assert_names(setup_error(lambda p=protocol: server_context(*pair, alpn=[p])), "tls_alpn")
    assert_names(setup_error(lambda: client_context(alpn=["h2", ""])), "alpn")


def test_server_needs_a_certificate() -> None:
    error = setup_error(lambda: server_context(None, None))
    assert_names(error, "tls_cert", "needs a certificate")
    assert "tls_self_signed" in error.params


# -- the throwaway certificate ------------------------------------------------------------


def openssl_fingerprint(cert: str) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", cert],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    return out.strip().partition("=")[2]  # "sha256 Fingerprint=AB:CD:..."


def test_self_signed_is_verifiable_by_a_client_that_trusts_it(tmp_path: Path) -> None:
    made = self_signed(str(tmp_path))
    assert made.names == ("localhost", "127.0.0.1", "::1")
    assert os.stat(made.key).st_mode & 0o777 == 0o600
    server_ctx = server_context(made.cert, made.key)
    for host in made.names:
        client, _ = tls_handshake(client_context(ca=made.cert), server_ctx, host)
        assert client.version() == "TLSv1.3"
        assert fingerprint(peer_der(client)) == made.fingerprint
    strict = client_context(ca=made.cert)
    strict.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13
    tls_handshake(strict, server_ctx, "127.0.0.1")
    # Trust is what makes it pass: a client that does not trust it refuses it.
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(client_context(), server_ctx, "127.0.0.1")


def test_self_signed_fingerprint_is_openssls(tmp_path: Path) -> None:
    made = self_signed(str(tmp_path))
    assert made.fingerprint == openssl_fingerprint(made.cert)
    assert len(made.fingerprint) == 32 * 3 - 1
    assert made.fingerprint == made.fingerprint.upper()


def test_self_signed_names_and_days(tmp_path: Path) -> None:
    made = self_signed(str(tmp_path), names=["fivetuple.test", "10.1.2.3"], days=2)
    server_ctx = server_context(made.cert, made.key)
    tls_handshake(client_context(ca=made.cert), server_ctx, "fivetuple.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(client_context(ca=made.cert), server_ctx, "localhost")
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-dates", "-in", made.cert],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    assert "CN = fivetuple.test" in out or "CN=fivetuple.test" in out


def test_self_signed_without_openssl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    error = setup_error(lambda: self_signed(str(tmp_path)))
    assert_names(error, "tls_self_signed", "install openssl")
    assert {"tls_cert", "tls_key"} <= set(error.params)


def test_self_signed_into_an_unwritable_place(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    error = setup_error(lambda: self_signed(str(not_a_directory)))
    assert_names(error, "tls_self_signed", str(not_a_directory), "cannot write")


def test_self_signed_bad_arguments(tmp_path: Path) -> None:
    assert_names(setup_error(lambda: self_signed(str(tmp_path), names=[])), "tls_self_signed")
    assert_names(setup_error(lambda: self_signed(str(tmp_path), days=0)), "tls_self_signed")
    error = setup_error(lambda: self_signed(str(tmp_path), names=["/CN=evil"]))
    assert_names(error, "tls_self_signed", "not a host name")


def test_fingerprint_format() -> None:
    assert fingerprint(b"") == (
        "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:"
        "27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
    )
