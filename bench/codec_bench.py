"""Codec throughput: decode and encode, MB/s and messages/s, side by side in one run.

For 64 B, 1 KiB and 64 KiB messages, a stream of encoded messages is fed in
64 KiB chunks and in 1,500-byte chunks (one Ethernet MTU) to:

- fivetuple's ``length`` codec, and Twisted's ``Int32StringReceiver`` (the
  same wire format: a 4-byte big-endian length, then the payload);
- fivetuple's ``packets`` codec (header, CRC-32 trailer, fragments).

Each cell is the median of several timed repetitions, interleaved across the
codecs so that a noisy neighbour hurts them alike. Nothing here touches a socket.

usage: python bench/codec_bench.py [--repeats 7] [--mb 16] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from fivetuple.codecs import NEED_DATA, LengthPrefixed, Packets
from harness import write_marked_block

SIZES = [64, 1024, 65536]
CHUNKS = [65536, 1500]


def chunked(stream: bytes, chunk: int) -> list[bytes]:
    return [stream[i : i + chunk] for i in range(0, len(stream), chunk)]


class _Consumer:
    """Called once per message, as Twisted calls stringReceived: a fair consumer."""

    count = 0

    def message_received(self, message: bytes) -> None:
        self.count += 1


def decode_fivetuple(make: Callable[[], LengthPrefixed | Packets], chunks: list[bytes]) -> int:
    """The batched API, as MessageProtocol uses it."""
    receive = make().receive_messages
    consumer = _Consumer()
    on_message = consumer.message_received
    for chunk in chunks:
        for message in receive(chunk):
            on_message(message)
    return consumer.count


def decode_fivetuple_pull(make: Callable[[], LengthPrefixed | Packets], chunks: list[bytes]) -> int:
    """The h11-style API: next_event until NEED_DATA."""
    codec = make()
    consumer = _Consumer()
    on_message = consumer.message_received
    receive, next_event = codec.receive_data, codec.next_event
    for chunk in chunks:
        receive(chunk)
        while (message := next_event()) is not NEED_DATA:
            on_message(message)  # type: ignore[arg-type]
    return consumer.count


def decode_twisted(chunks: list[bytes]) -> int:
    from twisted.protocols.basic import Int32StringReceiver

    class Counter(Int32StringReceiver):
        MAX_LENGTH = 1 << 30
        count = 0

        def stringReceived(self, string: bytes) -> None:
            self.count += 1

    proto = Counter()
    receive = proto.dataReceived
    for chunk in chunks:
        receive(chunk)
    return proto.count


def encode_fivetuple(make: Callable[[], LengthPrefixed | Packets], messages: list[bytes]) -> int:
    encode = make().encode
    for message in messages:
        encode(message)
    return len(messages)


def encode_twisted(messages: list[bytes]) -> int:
    from twisted.protocols.basic import Int32StringReceiver

    class Sink:
        def write(self, data: bytes) -> None:
            pass

    proto = Int32StringReceiver()
    proto.transport = Sink()  # type: ignore[assignment]
    send = proto.sendString
    for message in messages:
        send(message)
    return len(messages)


def crc_only(packets: list[bytes]) -> int:
    """zlib.crc32 over every packet, nothing else: the floor under ``packets``."""
    crc32 = zlib.crc32
    for packet in packets:
        crc32(packet)
    return 0


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    count = fn()
    return time.perf_counter() - start, count


def interleaved_medians(
    runners: dict[str, Callable[[], int]], repeats: int, count: int | None = None
) -> dict[str, float]:
    """Median seconds of each runner over ``repeats`` rounds, all runners in each round.

    With ``count``, every runner but ``crc`` must report that many messages.
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            seconds, got = timed(run)
            assert count is None or got == count or name == "crc", (name, got, count)
            times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mb", type=float, default=16, help="payload megabytes per run")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    try:
        import twisted  # noqa: F401

        have_twisted = True
    except ImportError:
        have_twisted = False

    rows = []
    for size in SIZES:
        count = max(16, int(args.mb * 1e6 / size))
        messages = [bytes([i & 0xFF]) * size for i in range(min(count, 256))] * (count // 256 + 1)
        messages = messages[:count]
        length_stream = b"".join(LengthPrefixed().encode(m) for m in messages)
        sender = Packets(max_payload_bytes=0xFFFF)
        packet_list = [p for m in messages for p in sender.encode_packets(m)]
        packets_stream = b"".join(packet_list)
        for chunk in CHUNKS:
            length_chunks = chunked(length_stream, chunk)
            packet_chunks = chunked(packets_stream, chunk)
            runners: dict[str, Callable[[], int]] = {
                "length": lambda c=length_chunks: decode_fivetuple(LengthPrefixed, c),
                "length-pull": lambda c=length_chunks: decode_fivetuple_pull(LengthPrefixed, c),
                "packets": lambda c=packet_chunks: decode_fivetuple(
                    lambda: Packets(max_payload_bytes=0xFFFF), c
                ),
            }
            if have_twisted:
                runners["twisted"] = lambda c=length_chunks: decode_twisted(c)
            runners["crc"] = lambda p=packet_list: crc_only(p)
            rows.append(
                ("decode", size, chunk, count, interleaved_medians(runners, args.repeats, count))
            )
        enc: dict[str, Callable[[], int]] = {
            "length": lambda m=messages: encode_fivetuple(LengthPrefixed, m),
            "length-pull": lambda m=messages: encode_fivetuple(LengthPrefixed, m),
            "packets": lambda m=messages: encode_fivetuple(
                lambda: Packets(max_payload_bytes=0xFFFF), m
            ),
        }
        if have_twisted:
            enc["twisted"] = lambda m=messages: encode_twisted(m)
        rows.append(("encode", size, 0, count, interleaved_medians(enc, args.repeats)))

    table = render(args, rows, have_twisted)
    print(table)
    if args.write:
        write_marked_block(args.write, "codec_bench", table)


def render(args: argparse.Namespace, rows: list, have_twisted: bool) -> str:
    lines = [
        f"Command: `python bench/codec_bench.py --repeats {args.repeats} --mb {args.mb:g}` "
        f"(medians of {args.repeats} interleaved repetitions; Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs).",
        "",
        "`length` is the batched API (`receive_messages`, as `MessageProtocol` uses it);",
        "`pull` is the same codec driven by `next_event()` until NEED_DATA. Every consumer is",
        "called once per message, as Twisted calls `stringReceived`. `CRC bound` is the best",
        "`packets vs length` could be if parsing a packet cost nothing beyond `length`'s work and",
        "one `zlib.crc32` call over the packet: length / (length + CRC alone), measured in the",
        "same run.",
        "",
        "| op | message | chunk | length MB/s | length msg/s | pull vs Twisted | Twisted MB/s | length vs Twisted | packets MB/s | packets vs length | CRC bound |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for op, size, chunk, count, med in rows:
        mb = count * size / 1e6
        length_mbs = mb / med["length"]
        twisted = f"{mb / med['twisted']:,.0f}" if have_twisted else "n/a"
        vs = f"{med['twisted'] / med['length']:.2f}x" if have_twisted else "n/a"
        pull = f"{med['twisted'] / med['length-pull']:.2f}x" if have_twisted else "n/a"
        bound = f"{med['length'] / (med['length'] + med['crc']):.2f}" if "crc" in med else "-"
        lines.append(
            f"| {op} | {size:,} B | {f'{chunk:,} B' if chunk else '-'} | {length_mbs:,.0f} | "
            f"{count / med['length']:,.0f} | {pull} | {twisted} | {vs} | {mb / med['packets']:,.0f} | "
            f"{med['length'] / med['packets']:.2f} | {bound} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
