"""TLS contexts from options: certificates, SNI, ALPN, mutual TLS, and their errors.

Theory of operation. An ``ssl.SSLContext`` holds everything about TLS that is
the same for every connection: the certificate and key, the versions, the
ALPN protocols, whom to trust. The TLS transport (``_tls.py``) makes one
``SSLObject`` per connection from it and knows nothing of files; this module
turns a person's options into contexts, and every mistake in them into one
``SetupError`` line before a socket is opened.

Files are read and checked here before OpenSSL sees them, because OpenSSL's
own errors say ``[SSL] PEM lib`` for a missing key, a swapped cert and key, a
DER file or a damaged one alike. Each check names the file, what is wrong
and what to do; the options are ``{placeholders}`` (``{tls_cert}``) that a
command line renames to its flags (``SetupError.naming``). Only a mismatch
between certificate and key is left to OpenSSL (``KEY_VALUES_MISMATCH``):
telling it needs the key's mathematics. A password callback that refuses is
always passed, so an encrypted key fails with a line instead of prompting on
the terminal of a server.

Several certificates on one port (``sni``): the client names the server it
wants in its ClientHello (SNI, RFC 6066 section 3); OpenSSL calls the
context's ``sni_callback`` before it picks a certificate, and the callback
swaps the connection's context for the one holding that name's certificate.
Each of those contexts is built with the same settings as the default one,
because OpenSSL reads some of them (ALPN) from the context in force after
the swap. A name nobody configured keeps the default certificate. The
callback is installed even without ``sni``, since it is also where the name
the client asked for is recorded on the connection for ``sni_name``
(statistics, the admin table); an ``SSLObject`` takes attributes, so no
table keyed by connection is needed.

The throwaway certificate (``self_signed``): the standard library can use
certificates but not make them, so the ``openssl`` command makes one (an
ECDSA P-256 key, valid for a week, names in subjectAltName, RFC 6125). Its
SHA-256 fingerprint is computed here from the DER, printed the way
``openssl x509 -fingerprint -sha256`` prints it, so a person can compare it
with what a client shows.
"""

from __future__ import annotations

import binascii
import hashlib
import ipaddress
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .errors import SetupError

#: TLS versions a person may ask for as the minimum (older ones are broken, RFC 8996).
MIN_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
#: A PEM file larger than this is not a certificate, key or CA bundle (a system
#: bundle is about 200 KiB).
MAX_PEM_BYTES = 16 * 1024 * 1024
#: ALPN protocol names are 1 to 255 bytes (RFC 7301 section 3.1).
MAX_ALPN_BYTES = 255
#: How long the openssl command may take to make a certificate.
OPENSSL_TIMEOUT_S = 30.0
#: The names a throwaway certificate is valid for: loopback by name and address.
SELF_SIGNED_NAMES = ("localhost", "127.0.0.1", "::1")
#: The command that makes the throwaway certificate, looked up on PATH.
OPENSSL = "openssl"

# The attribute of an SSLObject (or SSLSocket) where the SNI callback leaves the
# server name the client asked for.
_SNI_ATTR = "_fivetuple_sni_name"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_CERT_LABELS = frozenset({b"CERTIFICATE", b"TRUSTED CERTIFICATE", b"X509 CERTIFICATE"})
_KEY_LABELS = frozenset({b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY", b"DSA PRIVATE KEY"})
_ENCRYPTED_KEY_LABEL = b"ENCRYPTED PRIVATE KEY"
_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]+")
_NO_OPENSSL = "needs the openssl command, which is not installed"
_INSTALL_OPENSSL = "install openssl, or pass {tls_cert} and {tls_key} instead"


# -- server and client contexts ---------------------------------------------------


def server_context(
    cert: str | None,
    key: str | None,
    *,
    sni: Mapping[str, tuple[str, str]] | None = None,
    alpn: Sequence[str] = (),
    client_ca: str | None = None,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """Build the SSLContext a TLS server listens with.

    Compression and renegotiation are off (CRIME, RFC 7457 section 2.6; and a
    renegotiation costs the server a handshake the client can ask for at will),
    and every handshake uses a fresh ECDH key.

    Args:
        cert: PEM file of the certificate chain, server certificate first.
        key: PEM file of its private key (unencrypted); None if it is in ``cert``.
        sni: server name -> (cert, key) for clients that ask for that name.
            A name matches exactly, ignoring case; ``*.example.com`` matches one
            label in front of ``example.com``. Other names get ``cert``.
        alpn: protocols to offer for ALPN, most preferred first (``h2``, ...).
        client_ca: PEM file of the CAs whose client certificates are accepted.
            Given, every client must present a certificate one of them signed
            (mutual TLS); a client without one fails the handshake.
        min_version: the oldest TLS version accepted, ``"1.2"`` or ``"1.3"``.

    Returns:
        The context, with an ``sni_callback`` that records the name each client
        asked for (``sni_name``) and picks that name's certificate.

    Raises:
        SetupError: a file missing, unreadable, not PEM, a key missing or not
            matching its certificate, a bad SNI name, ALPN protocol, CA file or
            version. Its ``params`` are ``tls_cert``, ``tls_key``, ``tls_sni``,
            ``tls_alpn``, ``tls_client_ca``, ``tls_min_version`` and
            ``tls_self_signed``.
    """
    if cert is None:
        raise SetupError(
            "a TLS server needs a certificate: pass {tls_cert} and {tls_key}, "
            "or {tls_self_signed} to try things out",
            params=("tls_cert", "tls_key", "tls_self_signed"),
        )
    version = _min_version(min_version, "tls_min_version")
    protocols = _alpn_protocols(alpn, "tls_alpn")

    def new_context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = version
        ctx.options |= (
            ssl.OP_NO_COMPRESSION
            | ssl.OP_SINGLE_ECDH_USE
            | getattr(ssl, "OP_NO_RENEGOTIATION", ssl.Options(0))
        )
        if protocols:
            ctx.set_alpn_protocols(protocols)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            _load_ca(ctx, client_ca, "tls_client_ca")
        return ctx

    default = new_context()
    _load_pair(default, cert, key, _Naming("tls_cert", "tls_key"))
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for raw_name, (sni_cert, sni_key) in (sni or {}).items():
        name = _sni_name_key(raw_name)
        table, label = (wildcard, name[2:]) if name.startswith("*.") else (exact, name)
        if label in table:
            raise SetupError(
                f"{{tls_sni}} names {raw_name} twice; give each server name one certificate",
                params=("tls_sni",),
            )
        table[label] = new_context()
        _load_pair(table[label], sni_cert, sni_key, _Naming("tls_sni", "tls_sni", raw_name))
    default.sni_callback = _sni_callback(exact, wildcard)
    return default


def client_context(
    *,
    insecure: bool = False,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    alpn: Sequence[str] = (),
    min_version: str | None = None,
) -> ssl.SSLContext:
    """Build the SSLContext a TLS client connects with.

    The server's certificate must chain to a trusted CA and name the host the
    client asked for (the ``server_hostname`` given to ``wrap_bio``), unless
    ``insecure``.

    Args:
        insecure: accept any certificate for any name (trying things out only:
            anyone on the path can then read and change the traffic).
        ca: PEM file of the CAs to trust instead of the system's.
        cert: PEM file of a client certificate chain, for mutual TLS.
        key: PEM file of its private key; None if it is in ``cert``.
        alpn: protocols to offer for ALPN, most preferred first.
        min_version: the oldest TLS version accepted, ``"1.2"`` or ``"1.3"``;
            None keeps the standard library's (1.2).

    Returns:
        The context.

    Raises:
        SetupError: a file missing, unreadable, not PEM, a key not matching its
            certificate, ``insecure`` together with ``ca``, a bad ALPN protocol
            or version. Its ``params`` are ``insecure``, ``ca``, ``cert``,
            ``key``, ``alpn`` and ``min_version``.
    """
    if insecure and ca is not None:
        raise SetupError(
            "{insecure} turns certificate checks off, so {ca} would be ignored; pass one of them",
            params=("insecure", "ca"),
        )
    if key is not None and cert is None:
        raise SetupError(
            "{key} was given without {cert}; pass the client certificate with {cert}",
            params=("key", "cert"),
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if min_version is not None:
        ctx.minimum_version = _min_version(min_version, "min_version")
    protocols = _alpn_protocols(alpn, "alpn")
    if protocols:
        ctx.set_alpn_protocols(protocols)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca is not None:
        _load_ca(ctx, ca, "ca")
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None:
        _load_pair(ctx, cert, key, _Naming("cert", "key"))
    return ctx


def sni_name(conn: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The server name a client asked for (SNI) on a connection of ``server_context``.

    Args:
        conn: the server side of a connection whose handshake got past the
            ClientHello.

    Returns:
        The name as the client sent it (an IDN in its ``xn--`` form), or None
        if it sent none (clients send none when connecting to an address).
    """
    name: str | None = getattr(conn, _SNI_ATTR, None)
    return name


def parse_sni_spec(spec: str) -> tuple[str, tuple[str, str]]:
    """Split a ``--tls-sni`` value ``NAME=CERT,KEY`` into ``(NAME, (CERT, KEY))``.

    ``NAME=PEM`` (no key) means the PEM file holds both; it comes back as
    ``(NAME, (PEM, PEM))``. A comma inside the certificate's path is allowed,
    one inside the key's is not (the last comma splits).

    Args:
        spec: the option's value.

    Returns:
        The name and its (cert, key) pair, for ``server_context(sni=...)``.

    Raises:
        SetupError: no ``=``, an empty part, or a bad name (param ``tls_sni``).
    """
    name, equals, files = spec.partition("=")
    cert, comma, key = files.rpartition(",")
    if not comma:
        cert = key = files
    if not (equals and name and cert and key):
        raise SetupError(
            f"{{tls_sni}} {spec!r} is not NAME=CERT,KEY; "
            "write it like {tls_sni} example.com=example.pem,example-key.pem",
            params=("tls_sni",),
        )
    _sni_name_key(name)
    return name, (cert, key)


# -- the throwaway certificate ------------------------------------------------------


@dataclass(frozen=True)
class SelfSigned:
    """A self-signed certificate made by ``self_signed``.

    Attributes:
        cert: path of the certificate (PEM).
        key: path of its private key (PEM, unencrypted, mode 0600).
        fingerprint: SHA-256 of the certificate's DER as ``AB:CD:...``.
        names: the host names and addresses it is valid for.
    """

    cert: str
    key: str
    fingerprint: str
    names: tuple[str, ...]


def self_signed(
    directory: str, names: Sequence[str] = SELF_SIGNED_NAMES, days: int = 7
) -> SelfSigned:
    """Make a throwaway self-signed certificate and key with the ``openssl`` command.

    For trying a TLS server out: a client trusts it only if told to (``--ca``
    with the certificate, or ``--insecure``), and should compare the
    fingerprint.

    Args:
        directory: where to write ``self-signed-cert.pem`` and
            ``self-signed-key.pem`` (a private temporary directory; files
            already there are replaced).
        names: host names and IP addresses it is valid for; the first is also
            the subject's common name.
        days: how long it is valid.

    Returns:
        The files and the certificate's fingerprint.

    Raises:
        SetupError: openssl missing or failing, the directory not writable, a
            bad name or day count (params ``tls_self_signed``, ``tls_cert``,
            ``tls_key``).
    """
    if not names:
        raise _self_signed_error("needs at least one name for the certificate")
    if days < 1:
        raise _self_signed_error(f"needs a validity of 1 day or more, not {days}")
    san = ",".join(_san_entry(name) for name in names)
    openssl = shutil.which(OPENSSL)
    if openssl is None:
        raise _self_signed_error(_NO_OPENSSL, _INSTALL_OPENSSL)
    cert_path = os.path.join(directory, "self-signed-cert.pem")
    key_path = os.path.join(directory, "self-signed-key.pem")
    try:
        # Created private before openssl writes the key into it.
        os.close(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.chmod(key_path, 0o600)
    except OSError as exc:
        raise _self_signed_error(
            f"cannot write in {_show(directory)} ({exc.strerror or exc})"
        ) from None
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}",
        "-days", str(days), "-keyout", key_path, "-out", cert_path,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=OPENSSL_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise _self_signed_error(_NO_OPENSSL, _INSTALL_OPENSSL) from None
    except subprocess.TimeoutExpired:
        raise _self_signed_error(f"openssl did not finish in {OPENSSL_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise _self_signed_error(f"openssl could not make a certificate ({why})")
    with open(cert_path, "rb") as file:
        pem = file.read().decode("ascii")
    return SelfSigned(
        cert=cert_path,
        key=key_path,
        fingerprint=fingerprint(ssl.PEM_cert_to_DER_cert(pem)),
        names=tuple(names),
    )


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a certificate as ``openssl x509 -fingerprint -sha256`` prints it.

    Args:
        der: the certificate in DER (``getpeercert(binary_form=True)``,
            ``ssl.PEM_cert_to_DER_cert``).

    Returns:
        Upper-case hex bytes joined by colons: ``"3A:0F:..."`` (95 characters).
    """
    return hashlib.sha256(der).digest().hex(":").upper()


def _self_signed_error(
    problem: str, fix: str = "pass {tls_cert} and {tls_key} instead"
) -> SetupError:
    return SetupError(
        "{tls_self_signed} " + problem + "; " + fix,
        params=("tls_self_signed", "tls_cert", "tls_key"),
    )


def _san_entry(name: str) -> str:
    """One subjectAltName entry: ``IP:`` for an address, ``DNS:`` for a host name."""
    try:
        return f"IP:{ipaddress.ip_address(name)}"
    except ValueError:
        pass
    if not _valid_host(name.lower()):
        raise _self_signed_error(f"cannot put {name!r} in a certificate: not a host name")
    return f"DNS:{name}"


# -- SNI -----------------------------------------------------------------------------


def _sni_callback(
    exact: Mapping[str, ssl.SSLContext], wildcard: Mapping[str, ssl.SSLContext]
) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]:
    """The ``sni_callback``: record the name asked for, switch to its certificate."""

    def pick(conn: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        # An exception here would fail the handshake and print a traceback
        # (sys.unraisablehook): this stays to lookups that cannot raise.
        setattr(conn, _SNI_ATTR, server_name)
        if server_name is None:
            return
        name = server_name.lower()
        chosen = exact.get(name)
        if chosen is None and wildcard:
            chosen = wildcard.get(name.partition(".")[2])
        if chosen is not None:
            conn.context = chosen

    return pick


def _sni_name_key(name: str) -> str:
    """The lookup key of an SNI name: lower case, IDNs as ``xn--`` A-labels."""
    bad = SetupError(
        f"{{tls_sni}} name {name!r} is not a server name; give a host name such as "
        "example.com or *.example.com",
        params=("tls_sni",),
    )
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise SetupError(
            f"{{tls_sni}} name {name} is an address, and clients send names only "
            "(RFC 6066 section 3); give a host name, the default certificate serves addresses",
            params=("tls_sni",),
        )
    wild = name.startswith("*.")
    try:
        key = (name[2:] if wild else name).encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise bad from None
    if not _valid_host(key):
        raise bad
    return "*." + key if wild else key


def _valid_host(name: str) -> bool:
    """Whether a lower-case ASCII name is dot-separated labels of 1-63 characters."""
    labels = name.split(".")
    return len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


# -- options -------------------------------------------------------------------------


def _min_version(value: str, param: str) -> ssl.TLSVersion:
    version = MIN_VERSIONS.get(value)
    if version is None:
        raise SetupError(
            "{" + param + f"}} must be 1.2 or 1.3, not {value!r}",
            params=(param,),
        )
    return version


def _alpn_protocols(alpn: Sequence[str], param: str) -> list[str]:
    protocols = list(alpn)
    for protocol in protocols:
        if not (
            protocol.isascii()
            and protocol.isprintable()
            and 1 <= len(protocol) <= MAX_ALPN_BYTES
            and " " not in protocol
        ):
            raise SetupError(
                "{" + param + f"}} {protocol!r} is not a protocol name; give 1 to "
                f"{MAX_ALPN_BYTES} ASCII characters without spaces, such as h2 or http/1.1",
                params=(param,),
            )
    if protocols and not ssl.HAS_ALPN:
        raise SetupError(
            "{" + param + "} needs an OpenSSL with ALPN, which this Python lacks; "
            "leave it out or upgrade OpenSSL",
            params=(param,),
        )
    return protocols


# -- files -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Naming:
    """How error lines name a certificate and its key: by parameter, and the SNI name."""

    cert_param: str
    key_param: str
    server_name: str = ""

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.cert_param, self.key_param)))

    def cert(self, path: str) -> str:
        if self.server_name:
            return f"{{{self.cert_param}}} {self.server_name}: certificate {_show(path)}"
        return f"{{{self.cert_param}}} {_show(path)}"

    def other_cert(self, path: str) -> str:
        """The certificate, named after its key has been (by path alone for an SNI name)."""
        return _show(path) if self.server_name else self.cert(path)

    def both(self) -> str:
        """The certificate and the key, as a swap would name them."""
        if self.server_name:
            return "the certificate and the key"
        return f"{{{self.cert_param}}} and {{{self.key_param}}}"

    def key(self, path: str) -> str:
        if self.server_name:
            return f"{{{self.key_param}}} {self.server_name}: key {_show(path)}"
        return f"{{{self.key_param}}} {_show(path)}"


def _load_pair(ctx: ssl.SSLContext, cert: str, key: str | None, naming: _Naming) -> None:
    """Check a certificate and key file, then load them into ``ctx``."""
    params = naming.params
    cert_pem = _read(cert, naming.cert(cert), params)
    _require_certificates(cert_pem, cert, naming.cert(cert), params, naming=naming)
    key_path = cert if key is None else key
    key_pem = cert_pem if key is None else _read(key_path, naming.key(key_path), params)
    blocks = _pem_blocks(key_pem)
    if any(_encrypted(label, body) for label, body in blocks):
        raise SetupError(
            f"{naming.key(key_path)}: the private key is encrypted, and a server cannot "
            f"ask for its passphrase; decrypt it: openssl pkey -in {_show(key_path)} "
            "-out plain-key.pem",
            params=params,
        )
    if not any(label in _KEY_LABELS for label, _ in blocks):
        if key is None:
            raise SetupError(
                f"{naming.cert(cert)} holds no private key and {{{naming.key_param}}} was "
                f"not given; pass the key file with {{{naming.key_param}}}",
                params=params,
            )
        raise SetupError(
            f"{naming.key(key_path)}: no PEM private key in it (no '-----BEGIN PRIVATE "
            "KEY-----' line); pass the private key of the certificate, in PEM form",
            params=params,
        )
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise SetupError(
                f"{naming.key(key_path)} does not match the certificate in "
                f"{naming.other_cert(cert)}; pass the key the certificate was made for",
                params=params,
            ) from None
        raise SetupError(
            f"{naming.cert(cert)} and its key {_show(key_path)} could not be loaded "
            f"({_ssl_reason(exc)}); pass a PEM certificate chain and its private key",
            params=params,
        ) from None
    except _PasswordNeeded:
        raise SetupError(
            f"{naming.key(key_path)}: the private key is encrypted; decrypt it: "
            f"openssl pkey -in {_show(key_path)} -out plain-key.pem",
            params=params,
        ) from None
    except OSError as exc:  # changed between our read and OpenSSL's
        raise _file_error(exc, naming.cert(cert), params) from None


def _load_ca(ctx: ssl.SSLContext, path: str, param: str) -> None:
    """Check a PEM file of CA certificates, then trust them in ``ctx``."""
    subject = "{" + param + "} " + _show(path)
    _require_certificates(_read(path, subject, (param,)), path, subject, (param,))
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise SetupError(
            f"{subject} could not be loaded as CA certificates ({_ssl_reason(exc)}); "
            "pass the CA certificates in PEM form",
            params=(param,),
        ) from None
    except OSError as exc:
        raise _file_error(exc, subject, (param,)) from None


def _require_certificates(
    pem: bytes,
    path: str,
    subject: str,
    params: tuple[str, ...],
    *,
    naming: _Naming | None = None,
) -> None:
    """Raise unless ``pem`` holds at least one certificate, all of them well-formed."""
    blocks = _pem_blocks(pem)
    certs = [body for label, body in blocks if label in _CERT_LABELS]
    if not certs:
        if naming is not None and any(label in _KEY_LABELS for label, _ in blocks):
            problem = f"holds a private key but no certificate; did you swap {naming.both()}?"
        elif pem[:1] == b"\x30":
            problem = (
                "is DER (binary), not PEM; convert it: "
                f"openssl x509 -inform der -in {_show(path)} -out cert.pem"
            )
        else:
            problem = (
                "holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line); "
                "pass the certificate in PEM form"
            )
        raise SetupError(f"{subject} {problem}", params=params)
    if not all(_base64_ok(body) for body in certs):
        raise SetupError(
            f"{subject} holds a damaged certificate (its base64 is broken); "
            "copy the file again from where it was issued",
            params=params,
        )


def _pem_blocks(pem: bytes) -> list[tuple[bytes, bytes]]:
    """(label, body) of every ``-----BEGIN label-----`` block in a PEM file."""
    return [(m.group(1), m.group(2)) for m in _PEM_BLOCK.finditer(pem)]


def _base64_ok(body: bytes) -> bool:
    if not _BASE64.fullmatch(body):
        return False
    try:
        binascii.a2b_base64(body)
    except binascii.Error:
        return False
    return True


def _encrypted(label: bytes, body: bytes) -> bool:
    """Whether a PEM block is an encrypted key (PKCS #8, or OpenSSL's legacy header)."""
    return label == _ENCRYPTED_KEY_LABEL or (
        label in _KEY_LABELS and b"Proc-Type: 4,ENCRYPTED" in body
    )


def _read(path: str, subject: str, params: tuple[str, ...]) -> bytes:
    """The bytes of a PEM file, or the SetupError that says why they cannot be had."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise _file_error(exc, subject, params) from None
    if len(data) > MAX_PEM_BYTES:
        raise SetupError(
            f"{subject} is larger than {MAX_PEM_BYTES >> 20} MiB, too large for a PEM "
            "certificate or key; check the path",
            params=params,
        )
    return data


def _file_error(exc: OSError, subject: str, params: tuple[str, ...]) -> SetupError:
    if isinstance(exc, FileNotFoundError):
        problem = "does not exist; check the path"
    elif isinstance(exc, PermissionError):
        problem = (
            "cannot be read: permission denied; let this user read it "
            "(chmod, chown) or run as its owner"
        )
    elif isinstance(exc, IsADirectoryError):
        problem = "is a directory; pass the PEM file inside it"
    else:
        problem = f"cannot be read ({exc.strerror or exc}); check the file"
    return SetupError(f"{subject} {problem}", params=params)


class _PasswordNeeded(Exception):
    """Raised by the password callback: the key is encrypted."""


def _no_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal for a passphrase.
    raise _PasswordNeeded


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).lower().replace("_", " ")


def _show(path: str) -> str:
    """A path as it goes into a one-line message (quoted if it would break the line)."""
    return path if path.isprintable() else repr(path)
