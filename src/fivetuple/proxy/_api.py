"""The proxy's HTTP API, shaped like toxiproxy's: ``/proxies/NAME/toxics``.

Theory of operation. The API is served by the admin endpoint's own HTTP
machinery (``admin/_http.py``: an h11 connection per client, answers given
in turns on the proxy's loop, its limits on request size, pipelining,
timeouts and connections). ``ApiProtocol`` is that server's protocol with
other routes: it also reads request bodies (JSON, at most ``MAX_BODY_BYTES``)
and answers POST and DELETE.

Routes (NAME is a proxy, TOXIC a toxic)::

    GET    /proxies                    every proxy (toxiproxy's fields and totals)
    GET    /proxies/NAME               one proxy, with a row for each client
    GET    /proxies/NAME/toxics        its toxics
    POST   /proxies/NAME/toxics        add a toxic: {"name", "type", "stream",
                                       "toxicity", "attributes"} (type required)
    GET    /proxies/NAME/toxics/TOXIC  one toxic
    POST   /proxies/NAME/toxics/TOXIC  change it: {"toxicity", "attributes"} (merged)
    DELETE /proxies/NAME/toxics/TOXIC  remove it (204)

Errors are JSON ``{"error": "...", "status": N}`` (toxiproxy's shape): 400
for a body that is not JSON or a toxic that cannot be (unknown type or
attribute, impossible value, name taken), 404 for an unknown proxy, toxic or
path, 405 for a method a path does not take, 413 for a body over
``MAX_BODY_BYTES``. A change applies at once to the clients already there.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

import h11

from .._loop import Loop
from .._server import Server
from ..admin._http import (
    JSON_TYPE,
    MAX_PIPELINED_REQUESTS,
    REQUEST_ROWS,
    AdminEndpoint,
    AdminProtocol,
    admin_server,
)
from ..errors import SetupError
from ._base import ProxyBase
from ._toxics import ToxicError

#: The largest request body read (a toxic is a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024

Answer = tuple[int, Any]


def _error(status: int, message: str) -> Answer:
    return status, {"error": message, "status": status}


class ProxyApi:
    """The API's routes over some proxies, as plain calls: (method, path, body) -> answer.

    Args:
        proxies: name -> proxy.
    """

    def __init__(self, proxies: Mapping[str, ProxyBase]) -> None:
        self.proxies = proxies

    def handle(self, method: str, path: str, body: bytes) -> Answer:
        """Answer one request.

        Returns:
            (status, document): the document is JSON-able (None for 204).
        """
        parts = [urllib.parse.unquote(part) for part in path.strip("/").split("/")]
        if parts[0] != "proxies":
            return _error(404, f"no {path} here; try GET /proxies")
        if len(parts) == 1:
            if method != "GET":
                return _error(405, "GET /proxies only")
            return 200, {name: p.document(clients=False) for name, p in self.proxies.items()}
        proxy = self.proxies.get(parts[1])
        if proxy is None:
            return _error(404, f"no proxy {parts[1]!r}; GET /proxies lists them")
        if len(parts) == 2:
            if method != "GET":
                return _error(405, f"GET /proxies/{proxy.name} only")
            return 200, proxy.document(clients=True)
        if parts[2] != "toxics" or len(parts) > 4:
            return _error(404, f"no {path} here; try /proxies/{proxy.name}/toxics")
        if len(parts) == 3:
            return self._toxics(proxy, method, body)
        return self._toxic(proxy, parts[3], method, body)

    def _toxics(self, proxy: ProxyBase, method: str, body: bytes) -> Answer:
        if method == "GET":
            return 200, [toxic.document() for toxic in proxy.toxics]
        if method != "POST":
            return _error(405, "GET or POST /proxies/NAME/toxics")
        try:
            toxic = proxy.add_toxic(_json_object(body))
        except ToxicError as exc:
            return _error(400, str(exc))
        return 200, toxic.document()

    def _toxic(self, proxy: ProxyBase, name: str, method: str, body: bytes) -> Answer:
        toxic = proxy.toxics.get(name)
        if toxic is None:
            return _error(404, f"proxy {proxy.name} has no toxic {name!r}")
        if method == "GET":
            return 200, toxic.document()
        if method == "DELETE":
            proxy.remove_toxic(name)
            return 204, None
        if method != "POST":
            return _error(405, "GET, POST or DELETE /proxies/NAME/toxics/TOXIC")
        try:
            proxy.update_toxic(name, _json_object(body))
        except ToxicError as exc:
            return _error(400, str(exc))
        return 200, toxic.document()


def _json_object(body: bytes) -> Any:
    try:
        doc = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise ToxicError(f"the body is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ToxicError("the body must be a JSON object")
    return doc


class ApiProtocol(AdminProtocol):
    """One API client: the admin endpoint's HTTP server, with bodies, POST and DELETE."""

    __slots__ = ("_api", "_body")

    def __init__(self, endpoint: AdminEndpoint, api: ProxyApi) -> None:
        super().__init__(endpoint)
        self._api = api
        self._body = bytearray()

    def _request_begun(self) -> None:
        self._body = bytearray()

    def _body_received(self, data: bytes) -> bool:
        if len(self._body) + len(data) > MAX_BODY_BYTES:
            self._json(413, _error(413, f"a body of at most {MAX_BODY_BYTES} bytes")[1])
            self._close("protocol-error")
            return False
        self._body += data
        return True

    def _answer(self, budget: int) -> int:
        request = self._request
        assert request is not None
        if request.method in (b"GET", b"HEAD") or self._pipelined >= MAX_PIPELINED_REQUESTS:
            return super()._answer(budget)  # (-> _route; or 429 and close)
        self._disarm()
        self._awaiting = False
        self._respond(request, request.method.decode("ascii", "replace"))
        return REQUEST_ROWS

    def _route(self, request: h11.Request, path: str, query: str, budget: int) -> int:
        self._respond(request, "GET")
        return REQUEST_ROWS

    def _respond(self, request: h11.Request, method: str) -> None:
        path = request.target.decode("ascii", "replace").partition("?")[0]
        status, doc = self._api.handle(method, path, bytes(self._body))
        self._body = bytearray()
        if status == 204:
            self._no_content()
        else:  # to HEAD, the head alone (with the body's length)
            body = json.dumps(doc).encode()
            head = request.method == b"HEAD"
            self._send(status, JSON_TYPE, b"" if head else body, length=len(body))
        self._answered()

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, JSON_TYPE, json.dumps(doc).encode())

    def _no_content(self) -> None:
        http = self._http
        response = h11.Response(
            status_code=204, headers=[("Cache-Control", "no-store")], reason=b"No Content"
        )
        self._write(http.send(response) + (http.send(h11.EndOfMessage()) or b""))


def start_api(
    proxies: Mapping[str, ProxyBase], loop: Loop, host: str = "127.0.0.1", port: int = 0
) -> Server:
    """Serve the proxies' HTTP API on ``host``:``port`` (loopback only), on ``loop``.

    Returns:
        The API's listener, started (``addresses`` say where).

    Raises:
        SetupError: ``host`` is not a loopback address, or the address is in use.
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SetupError(
            f"--admin {host}: the API changes what the proxy does to traffic, so it listens "
            "on loopback only; use 127.0.0.1 or ::1"
        )
    api = ProxyApi(proxies)
    endpoint = AdminEndpoint(None, loop=loop)
    return admin_server(endpoint, lambda: ApiProtocol(endpoint, api), host, port)
