"""``bench chat``'s bookkeeping without sockets: who is in, what counts as missing,
duplicated and reordered (the end-to-end runs are in tests/apps/test_backplane.py
and tests/test_cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fivetuple.loadgen._chat_bench import ChatBench


class FakeTransport:
    """What a member writes, kept."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


@pytest.fixture
def bench() -> Iterator[ChatBench]:
    bench = ChatBench(["tcp://127.0.0.1:9"], 3, rate=10.0, duration=1.0)
    for member in bench.members:
        member.connection_made(FakeTransport())  # type: ignore[arg-type]
    yield bench
    bench.loop.close()


def line(sender: int, seq: int, sent_us: int = 0) -> bytes:
    return b"<127.0.0.1:5%03d> bench %d %d %d\n" % (sender, sender, seq, sent_us)


def test_a_member_is_in_once_the_chat_has_spoken_to_it_and_only_then_says(
    bench: ChatBench,
) -> None:
    a, b, _ = bench.members
    assert bench.up == 0  # connected (to a balancer, say) is not in the room yet
    a.data_received(b"* welcome, you are 127.0.0.1:5000; 0 other(s) here. Commands: ...\n")
    assert (a.is_in, b.is_in, bench.up) == (True, False, 1)
    bench.sending = True
    a.say()
    b.say()
    assert len(a.transport.written) == 1 and b.transport.written == []  # type: ignore[union-attr]
    assert (a.seq, b.seq) == (1, 0)
    report = bench.report()
    assert report["connected"] == 1 and report["sent"] == 1
    assert report["expected"] == 0  # nobody else is in to receive a's line


def test_gaps_repeats_and_late_lines_are_told_apart(bench: ChatBench) -> None:
    a, b, c = bench.members
    for member in (a, b, c):
        member.data_received(b"* welcome\n")
    b.seq, c.seq = 4, 1  # what b and c said
    # a hears b's 1, 3 (2 skipped), 2 late, 3 again; c's 1 in two reads.
    a.data_received(line(1, 1) + line(1, 3) + line(1, 2))
    a.data_received(line(1, 3) + line(2, 1)[:9])
    a.data_received(line(2, 1)[9:] + b"* somebody joined\n")
    assert (bench.reordered, bench.duplicated) == (1, 1)
    report = bench.report()
    # a misses b's 4; b and c miss everything of each other's and a's (a said nothing).
    assert report["expected"] == (4 + 1) + (0 + 1) + (0 + 4)
    assert report["delivered"] == 5  # every line a read counts, the repeat too
    assert report["missing"] == 1 + 1 + 4
