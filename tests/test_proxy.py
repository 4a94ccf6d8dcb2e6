"""fivetuple proxy: each toxic's effect against a real echo server, the API, UDP's impairments.

The proxy runs as a real process (``fivetuple proxy ... --admin 127.0.0.1:0``)
in front of an echo server on loopback; clients are blocking sockets with a
timeout. Where the toxic is a delay, it is measured with several samples and
their median; no test asserts a wall-clock duration below a second except
as a lower bound a timer cannot miss.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from http.client import HTTPConnection
from typing import Any

import pytest

from fivetuple.apps import Echo
from fivetuple.netsim import Link, LinkConfig
from fivetuple.proxy import TCP_TYPES, UDP_TYPES, ToxicError, make_toxic, parse_toxic_spec
from fivetuple.proxy._tcp import HELD_HIGH_BYTES
from fivetuple.proxy._toxics import update_toxic
from helpers import (
    CLIENT_TIMEOUT_S,
    Background,
    echoes,
    needs_ipv6,
    port_of,
    recv_exactly,
    recv_until_eof,
    rss,
    run_cli,
    running_server,
    running_udp_server,
    stuff,
    udp_client,
    wait_for,
)

pytestmark = pytest.mark.timeout(30)

READY = re.compile(r"proxy (\S+) listening on (tcp|udp)://(\S+):(\d+) -> (\S+)$")
TOXICS = "/proxies/proxy/toxics"


class Proxy:
    """``fivetuple proxy LISTEN UPSTREAM ARGS --admin 127.0.0.1:0`` as a real process.

    Reads its ready line (and the API's address); SIGTERM on exit, then
    ``stderr`` holds what it logged (the summary line among it).
    """

    def __init__(self, listen: str, upstream: str, *args: str) -> None:
        argv = ["proxy", listen, upstream, *args, "--admin", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fivetuple", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        ready = READY.match(line)
        if ready is None:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
            raise AssertionError(f"proxy did not start: {line!r} {err!r}")
        self.name, self.scheme, host, port, self.upstream = ready.groups()
        self.host, self.port = host.strip("[]"), int(port)
        admin = self.proc.stdout.readline().strip()
        assert admin.startswith("admin on http://127.0.0.1:"), admin
        self.admin_port = int(admin.rsplit(":", 1)[1])
        self.stderr = ""

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=CLIENT_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One API request; (status, decoded JSON or None)."""
        http = HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            payload = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            http.request(method, path, body=payload)
            answer = http.getresponse()
            data = answer.read()
            return answer.status, json.loads(data) if data else None
        finally:
            http.close()

    def document(self) -> dict[str, Any]:
        status, doc = self.api("GET", f"/proxies/{self.name}")
        assert status == 200
        return dict(doc)

    def stop(self) -> int:
        """SIGTERM, wait; the exit status (``stderr`` is then what it logged)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, self.stderr = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self.stderr = self.proc.communicate()
        return self.proc.returncode

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def round_trips(sock: socket.socket, count: int) -> list[float]:
    """Seconds of ``count`` echo round trips of 16 bytes, one after the other."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        assert echoes(sock, b"x" * 16)
        times.append(time.perf_counter() - started)
    return times


def upstream(server: Any, scheme: str = "tcp", host: str = "127.0.0.1") -> str:
    where = f"[{host}]" if ":" in host else host
    return f"{scheme}://{where}:{port_of(server)}"


# -- TCP: each toxic against a real echo server -------------------------------------


def test_a_toxic_spec_gives_name_type_attributes_stream_and_toxicity() -> None:
    toxic = parse_toxic_spec("slow=latency:latency=100,jitter=10@upstream%0.5", TCP_TYPES)
    assert toxic.document() == {
        "name": "slow",
        "type": "latency",
        "stream": "upstream",
        "toxicity": 0.5,
        "attributes": {"latency": 100, "jitter": 10},
    }
    assert parse_toxic_spec("limit_data:bytes=5", TCP_TYPES).name == "limit_data_downstream"
    netsim = parse_toxic_spec("netsim:loss=0.1,mtu=none@upstream", UDP_TYPES)
    assert netsim.link_config() == LinkConfig(loss=0.1)


def test_a_change_is_made_in_place_and_a_bad_one_changes_nothing() -> None:
    toxic = make_toxic({"type": "latency", "attributes": {"latency": 5}}, TCP_TYPES)
    before = toxic.document()
    with pytest.raises(ToxicError, match="0 or more"):
        update_toxic(toxic, {"toxicity": 0.5, "attributes": {"latency": -1}}, TCP_TYPES)
    assert toxic.document() == before
    update_toxic(toxic, {"attributes": {"jitter": 2}}, TCP_TYPES)
    assert toxic.attributes == {"latency": 5, "jitter": 2}


def test_it_forwards_prints_its_ready_line_and_counts_each_client() -> None:
    with running_server(Echo) as echo, Proxy("tcp://127.0.0.1:0", upstream(echo)) as proxy:
        assert proxy.upstream == upstream(echo)
        with proxy.connect() as sock:
            assert echoes(sock, b"hello" * 1000)
            (row,) = proxy.document()["clients"]
            assert row["client"] == f"127.0.0.1:{sock.getsockname()[1]}"
            assert row["upstream_stream"]["bytes_out"] == 5000
            assert row["downstream_stream"]["bytes_out"] == 5000
        (row,) = wait_for(lambda: proxy.document()["recent"], what="the closed row")
        assert row["end"] == "eof" and proxy.document()["stats"]["ended"] == {"eof": 1}
        assert proxy.stop() == 0
    assert "event=summary" in proxy.stderr and "1 connections" in proxy.stderr


def test_latency_is_added_within_10ms_and_changes_mid_stream() -> None:
    with (
        running_server(Echo) as echo,
        Proxy("tcp://127.0.0.1:0", upstream(echo)) as proxy,
        proxy.connect() as sock,
    ):
        before = statistics.median(round_trips(sock, 7))
        status, toxic = proxy.api(
            "POST", TOXICS, {"type": "latency", "attributes": {"latency": 100}}
        )
        assert status == 200 and toxic["name"] == "latency_downstream"
        added = statistics.median(round_trips(sock, 7)) - before
        assert 0.099 <= added <= 0.110, f"latency 100 ms added {added * 1000:.1f} ms"
        status, toxic = proxy.api(
            "POST", f"{TOXICS}/latency_downstream", {"attributes": {"latency": 30}}
        )
        assert status == 200 and toxic["attributes"] == {"latency": 30, "jitter": 0.0}
        added = statistics.median(round_trips(sock, 7)) - before
        assert 0.029 <= added <= 0.040, f"latency 30 ms added {added * 1000:.1f} ms"
        assert proxy.api("DELETE", f"{TOXICS}/latency_downstream") == (204, None)
        assert statistics.median(round_trips(sock, 7)) < 0.5  # (generous: it is gone)


def test_bandwidth_passes_its_rate_within_10_percent() -> None:
    data = bytes(range(256)) * 480  # 122,880 bytes: about 1.2 s at 100 KB/s
    with (
        running_server(Echo) as echo,
        Proxy(
            "tcp://127.0.0.1:0", upstream(echo), "--toxic", "bandwidth:rate=100@upstream"
        ) as proxy,
        proxy.connect() as sock,
    ):
        started = time.perf_counter()
        sock.sendall(data)
        assert recv_exactly(sock, len(data)) == data
        rate = len(data) / (time.perf_counter() - started) / 1000
        assert 90 <= rate <= 110, f"bandwidth 100 KB/s passed {rate:.1f} KB/s"


def test_slicer_cuts_the_stream_into_small_pieces() -> None:
    toxic = "slicer:average_size=10,size_variation=0,delay=50000"  # 10 bytes, 50 ms apart
    with (
        running_server(Echo) as echo,
        Proxy("tcp://127.0.0.1:0", upstream(echo), "--toxic", toxic) as proxy,
        proxy.connect() as sock,
    ):
        sock.sendall(b"s" * 60)
        pieces = []
        while sum(pieces) < 60:
            pieces.append(len(sock.recv(1000)))
        assert len(pieces) >= 3 and statistics.median(pieces) <= 10, pieces


def test_timeout_stops_the_data_then_closes_and_0_holds_it_until_removed() -> None:
    with (
        running_server(Echo) as echo,
        Proxy("tcp://127.0.0.1:0", upstream(echo), "--toxic", "timeout:timeout=1000") as proxy,
    ):
        started = time.perf_counter()  # (before the connection: its toxic starts after)
        with proxy.connect() as sock:
            sock.sendall(b"never answered")
            assert recv_until_eof(sock) == b""
            assert time.perf_counter() - started >= 1.0
        assert (
            proxy.api("POST", f"{TOXICS}/timeout_downstream", {"attributes": {"timeout": 0}})[0]
            == 200
        )
        with proxy.connect() as sock:
            sock.sendall(b"held")
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(10)
            sock.settimeout(CLIENT_TIMEOUT_S)
            assert proxy.api("DELETE", f"{TOXICS}/timeout_downstream")[0] == 204
            assert recv_exactly(sock, 4) == b"held"  # held, not dropped: it goes on
        assert proxy.document()["stats"]["toxics_fired"] == {"timeout_downstream": 1}


def test_reset_peer_is_seen_as_econnreset_by_the_client() -> None:
    with (
        running_server(Echo) as echo,
        Proxy("tcp://127.0.0.1:0", upstream(echo), "--toxic", "reset_peer:timeout=0") as proxy,
        proxy.connect() as sock,
    ):
        sock.sendall(b"x")
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
        wait_for(lambda: proxy.document()["stats"]["ended"].get("reset_peer"), what="the end")


def test_limit_data_closes_after_n_bytes() -> None:
    with (
        running_server(Echo) as echo,
        Proxy("tcp://127.0.0.1:0", upstream(echo), "--toxic", "limit_data:bytes=100") as proxy,
        proxy.connect() as sock,
    ):
        data = bytes(range(250)) * 4
        sock.sendall(data)
        assert recv_until_eof(sock) == data[:100]


def test_slow_close_holds_the_eof() -> None:
    with (
        running_server(Echo) as echo,
        Proxy("tcp://127.0.0.1:0", upstream(echo), "--toxic", "slow_close:delay=1000") as proxy,
        proxy.connect() as sock,
    ):
        sock.sendall(b"bye")
        started = time.perf_counter()
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b"bye"
        assert time.perf_counter() - started >= 1.0


def test_toxicity_is_drawn_per_connection() -> None:
    toxics = ("--toxic", "never=latency:latency=5000%0", "--toxic", "always=limit_data:bytes=9")
    with running_server(Echo) as echo, Proxy("tcp://127.0.0.1:0", upstream(echo), *toxics) as proxy:
        for _ in range(3):
            with proxy.connect() as sock:
                sock.sendall(b"0123456789")
                assert recv_until_eof(sock) == b"012345678"
        stats = proxy.document()["stats"]
        assert stats["toxics_applied"] == {"always": 3}
        assert stats["toxics_fired"] == {"always": 3}


def test_flow_control_bounds_what_a_delaying_proxy_holds() -> None:
    with (
        running_server(Echo) as echo,
        Proxy("tcp://127.0.0.1:0", upstream(echo), "--toxic", "latency:latency=300") as proxy,
        proxy.connect() as sock,
    ):
        baseline = rss(proxy.proc.pid)
        sent = stuff(sock)  # never reads: the echo's answers pile up toward it
        assert sent > HELD_HIGH_BYTES  # (kernel buffers on the way take some)
        (row,) = proxy.document()["clients"]
        assert row["downstream_stream"]["held"] <= HELD_HIGH_BYTES + 64 * 1024
        assert rss(proxy.proc.pid) - baseline < 32 * 1024 * 1024


# -- TCP: the API, bad input, and an upstream that refuses -----------------------------


def test_the_api_answers_like_toxiproxy_and_refuses_bad_input_with_400() -> None:
    with (
        running_server(Echo) as echo,
        Proxy("tcp://127.0.0.1:0", upstream(echo), "--name", "web") as proxy,
    ):
        status, proxies = proxy.api("GET", "/proxies")
        assert status == 200 and proxies["web"]["upstream"] == upstream(echo)[6:]
        toxics = "/proxies/web/toxics"
        toxic = {
            "name": "slow",
            "type": "latency",
            "stream": "upstream",
            "attributes": {"latency": 5},
        }
        assert proxy.api("POST", toxics, toxic) == (
            200,
            {**toxic, "toxicity": 1.0, "attributes": {"latency": 5, "jitter": 0.0}},
        )
        bad = [
            ({"type": "nosuch"}, "unknown toxic type"),
            ({"type": "latency", "attributes": {"latency": 5, "speed": 1}}, "no attribute 'speed'"),
            ({"type": "latency", "attributes": {"latency": -5}}, "0 or more"),
            ({"type": "latency", "attributes": {}}, "needs latency"),
            ({"type": "latency", "toxicity": 1.5, "attributes": {"latency": 5}}, "toxicity"),
            ({"type": "latency", "stream": "sideways", "attributes": {"latency": 5}}, "stream"),
            ({"type": "slicer", "attributes": {"average_size": 5, "size_variation": 9}}, "less"),
            (toxic, "exists already"),
            (b"{not json", "not JSON"),
        ]
        for body, reason in bad:
            status, doc = proxy.api("POST", toxics, body)
            assert status == 400 and reason in doc["error"], (body, doc)
        assert proxy.api("POST", f"{toxics}/slow", {"type": "bandwidth"})[0] == 400
        assert proxy.api("GET", "/proxies/nosuch")[0] == 404
        assert proxy.api("GET", f"{toxics}/nosuch")[0] == 404
        assert proxy.api("DELETE", "/proxies/web")[0] == 405
        status, doc = proxy.api("POST", toxics, b" " * (64 * 1024 + 1))  # over the body cap
        assert status == 413 and "65536 bytes" in doc["error"], doc
        assert [t["name"] for t in proxy.api("GET", toxics)[1]] == ["slow"]
        assert proxy.api("DELETE", f"{toxics}/slow") == (204, None)
        assert proxy.api("GET", toxics) == (200, [])


def test_an_upstream_that_refuses_closes_each_client_and_is_logged_once() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]  # bound, not listening: connect is refused
        with Proxy("tcp://127.0.0.1:0", f"tcp://127.0.0.1:{closed_port}") as proxy:
            for _ in range(2):
                with proxy.connect() as sock:
                    assert recv_until_eof(sock) == b""
            stats = proxy.document()["stats"]
            assert stats["upstream_errors"] == {"ECONNREFUSED": 2}
            assert stats["ended"] == {"upstream-ECONNREFUSED": 2}
            assert proxy.stop() == 0
    assert proxy.stderr.count("event=upstream-error") == 1
    assert "upstream failed: ECONNREFUSED 2" in proxy.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--toxic", "latency:latency=-5"], "0 or more"),
        (["--toxic", "nosuch"], "unknown toxic type"),
        (["--toxic", "latency:latency"], "ATTR=VALUE"),
        (["--toxic", "latency:latency=1", "--toxic", "latency:latency=2"], "exists already"),
        (["--loss", "0.1"], "udp:// only"),
        (["--name", "a/b"], "--name"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = run_cli("proxy", "tcp://127.0.0.1:0", "tcp://127.0.0.1:7", *args)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_listen_in_use_and_mixed_protocols_are_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("proxy", f"tcp://127.0.0.1:{port}", "tcp://127.0.0.1:7")
        assert result.returncode == 2 and "already in use" in result.stderr, result.stderr
    result = run_cli("proxy", "udp://127.0.0.1:0", "tcp://127.0.0.1:7")
    assert result.returncode == 2 and "both" in result.stderr, result.stderr


@needs_ipv6
def test_tcp_over_ipv6() -> None:
    with (
        running_server(Echo, host="::1") as echo,
        Proxy(
            "tcp://[::1]:0", upstream(echo, host="::1"), "--toxic", "limit_data:bytes=5"
        ) as proxy,
        proxy.connect() as sock,
    ):
        sock.sendall(b"0123456789")
        assert recv_until_eof(sock) == b"01234"
        (row,) = wait_for(lambda: proxy.document()["recent"], what="the closed row")
        assert row["client"].startswith("[::1]:") and row["upstream"] == f"[::1]:{port_of(echo)}"


# -- UDP: netsim's impairments per client ---------------------------------------------


def test_udp_loss_with_a_seed_loses_about_the_expected_share() -> None:
    count = 400
    with (
        running_udp_server() as echo,
        Proxy("udp://127.0.0.1:0", upstream(echo, "udp"), "--loss", "0.1", "--seed", "7") as proxy,
        udp_client() as client,
    ):
        client.settimeout(1.0)

        def collect() -> set[bytes]:
            got = set()
            try:
                while True:
                    got.add(client.recvfrom(64)[0])
            except TimeoutError:
                return got

        reader = Background(collect)
        for i in range(count):
            client.sendto(i.to_bytes(4, "big"), proxy.address)
            if i % 20 == 19:
                time.sleep(0.002)  # paced: no kernel buffer on the way drops any
        echoed = len(reader.result())
        assert 0.72 * count <= echoed <= 0.90 * count  # 0.9 * 0.9 = 0.81 each way

        up = proxy.document()["stats"]["upstream_stream"]
        assert up["datagrams_in"] == count
        model = Link(LinkConfig(loss=0.1), "7:1:up")  # the seed names client 1's up link
        for i in range(count):
            model.send(i.to_bytes(4, "big"), 0.0)
        assert up["lost_random"] == model.lost_random  # the same seed, the same fates
        assert up["delivered"] == count - model.lost_random


def test_udp_impairments_change_through_the_api_and_bad_ones_get_400() -> None:
    with (
        running_udp_server() as echo,
        Proxy("udp://127.0.0.1:0", upstream(echo, "udp")) as proxy,
        udp_client() as client,
    ):
        client.sendto(b"through", proxy.address)
        assert client.recvfrom(64)[0] == b"through"
        blackhole = {"type": "netsim", "stream": "upstream", "attributes": {"loss": 1.0}}
        status, toxic = proxy.api("POST", TOXICS, blackhole)
        assert status == 200 and toxic["name"] == "netsim_upstream"
        for _ in range(5):
            client.sendto(b"lost", proxy.address)
        wait_for(
            lambda: proxy.document()["stats"]["upstream_stream"]["lost_random"] == 5,
            what="5 datagrams lost",
        )
        assert proxy.api("POST", TOXICS, {"type": "netsim", "attributes": {"loss": 2}})[0] == 400
        assert proxy.api("POST", TOXICS, {"type": "latency"})[0] == 400  # a TCP toxic
        assert proxy.api("POST", TOXICS, blackhole)[0] == 400  # one per stream
        change = {"attributes": {"loss": 0.0, "delay_s": 0.01}}
        assert proxy.api("POST", f"{TOXICS}/netsim_upstream", change)[0] == 200
        client.sendto(b"again", proxy.address)
        assert client.recvfrom(64)[0] == b"again"
        assert proxy.api("DELETE", f"{TOXICS}/netsim_upstream")[0] == 204
        (row,) = proxy.document()["clients"]
        assert (
            row["upstream_stream"]["datagrams_in"] == 7 and row["upstream_stream"]["toxic"] is None
        )


@needs_ipv6
def test_udp_over_ipv6() -> None:
    with (
        running_udp_server(host="::1") as echo,
        Proxy("udp://[::1]:0", upstream(echo, "udp", "::1"), "--duplicate", "1") as proxy,
        udp_client(socket.AF_INET6) as client,
    ):
        client.sendto(b"six", proxy.address)
        assert [client.recvfrom(64)[0] for _ in range(4)] == [b"six"] * 4  # doubled each way
        assert proxy.document()["clients"][0]["client"].startswith("[::1]:")
