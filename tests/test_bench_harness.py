"""bench/harness.py: the pieces every bench script shares, on real processes and sockets.

The harness is not a package: the scripts import it as ``harness`` because
Python puts bench/ on ``sys.path`` when they run as ``python bench/x.py``.
Here it is loaded from its file, and every script is run with ``--help`` to
check that it still finds it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import mmap
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest

from helpers import ROOT


def _load_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("harness", ROOT / "bench" / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("harness", module)
    spec.loader.exec_module(module)
    return module


harness = _load_harness()

#: A stand-in server: prints the banner, then waits; ``IGNORE`` makes it ignore SIGTERM.
FAKE_SERVER = """
import signal, socket, sys, time
if sys.argv[1] == "IGNORE":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.create_server(("127.0.0.1", 0))
print(f"listening on tcp://127.0.0.1:{listener.getsockname()[1]}", flush=True)
time.sleep(30)
"""
SCRIPTS = (
    "admin_attack.py",
    "admin_cost.py",
    "cluster.py",
    "codec_bench.py",
    "echo_compare.py",
    "impaired.py",
    "matrix.py",
    "reliable_bench.py",
    "reliable_listener_bench.py",
    "tls_compare.py",
    "tls_first_byte.py",
    "tls_io.py",
    "tls_stall.py",
    "under_attack.py",
)


# -- servers and loads ----------------------------------------------------------------


def test_running_server_reads_the_banner_echoes_and_stops_gracefully() -> None:
    with harness.RunningServer(harness.serve_echo_argv(), name="echo") as server:
        assert 0 < server.port < 65536
        assert server.admin_port == 0
        base_fds = server.fd_count()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            assert harness.echo_round_trip(sock, b"ping" * 16) > 0
            assert server.wait_fds(lambda n: n > base_fds, 5.0) == base_fds + 1
        assert server.wait_closed(base_fds, 5.0) == base_fds
        assert server.rss_bytes() > 0
        assert server.peak_rss_bytes() >= server.rss_bytes()
        started = time.monotonic()
        stderr = server.stop()
        took = time.monotonic() - started
    assert server.proc.returncode == 0, stderr  # SIGTERM handled, not killed
    assert took < harness.STOP_GRACE_S
    assert server.stop() == stderr  # idempotent, as __exit__ calls it again


def test_running_server_with_admin_reads_both_ports() -> None:
    argv = harness.serve_echo_argv("--admin", "127.0.0.1:0")
    with harness.RunningServer(argv, admin=True) as server:
        assert server.admin_port not in (0, server.port)
        url = f"http://127.0.0.1:{server.admin_port}/stats"
        with urllib.request.urlopen(url, timeout=5) as answer:
            assert answer.status == 200


def test_a_server_that_exits_before_its_banner_fails_with_its_stderr() -> None:
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('no such app'); sys.exit(3)"]
    with pytest.raises(harness.BenchFailure, match=r"(?s)status 3.*no such app"):
        harness.RunningServer(argv, name="broken", cpu=None)


def test_a_server_without_a_banner_fails_at_the_timeout_and_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    started = time.monotonic()
    with pytest.raises(harness.BenchFailure, match="printed no"):
        harness.RunningServer([sys.executable, "-c", code], cpu=None, banner_timeout_s=1.0)
    assert time.monotonic() - started < 5
    if pid_file.exists():  # else it was killed before it got that far (a very busy machine)
        assert not Path(f"/proc/{pid_file.read_text()}").exists()  # killed and reaped


def test_stop_kills_a_server_that_ignores_sigterm() -> None:
    argv = [sys.executable, "-c", FAKE_SERVER, "IGNORE"]
    server = harness.RunningServer(argv, cpu=None, stop_grace_s=0.3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    assert server.proc.returncode == -9


def test_run_load_returns_the_json_report_of_a_real_bench_run() -> None:
    with harness.RunningServer(harness.serve_echo_argv()) as server:
        before = server.cpu_times()
        options = ("--conns", "2", "--duration", "0.5")
        report, returncode = harness.run_load(harness.bench_argv("echo", server.port, *options), 30)
        used = server.cpu_times().since(before)
    assert returncode == 0
    assert report["error_count"] == 0
    assert report["round_trips"] > 0
    assert used.total_s >= 0 and used.minor_faults >= 0


def test_parse_report_takes_the_whole_output_or_its_last_line() -> None:
    assert harness.parse_report('{"a": 1}', 0, "") == {"a": 1}
    assert harness.parse_report('progress\n{"a": 2}\n', 0, "") == {"a": 2}
    with pytest.raises(harness.BenchFailure, match=r"status 1.*refused"):
        harness.parse_report("no report\n", 1, "connection refused")


def test_a_load_past_its_timeout_fails_and_is_killed() -> None:
    load = harness.Load([sys.executable, "-c", "import time; time.sleep(30)"], cpu=None)
    with pytest.raises(harness.BenchFailure, match="did not finish"):
        load.finish(0.2)
    load.close()
    assert load.proc.returncode == -9


def test_kill_group_kills_what_the_child_forked() -> None:
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 30 & echo $!; wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    harness.kill_group(proc)
    proc.stdout.close()
    assert proc.returncode == -9
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break  # gone
        if state == "Z":
            break  # dead, waiting for init to reap it
        time.sleep(0.02)
    else:
        pytest.fail(f"the grandchild {grandchild} survived kill_group")


# -- CPUs and environment ---------------------------------------------------------------


def test_pinned_builds_a_taskset_command_only_when_pinning() -> None:
    argv = ["prog", "arg"]
    assert harness.pinned(1, argv, pin=True) == ["taskset", "-c", "1", "prog", "arg"]
    assert harness.pinned(1, argv, pin=False) == argv
    assert harness.pinned(None, argv, pin=True) == argv
    assert harness.pinned(1, iter(argv), pin=False) == argv  # any iterable, a new list


def test_pinned_asks_for_taskset_when_not_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.shutil, "which", lambda name: None)
    assert not harness.pinning_available()
    assert harness.pinned(0, ["prog"]) == ["prog"]
    monkeypatch.setattr(harness.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(harness.os, "cpu_count", lambda: 1)
    assert not harness.pinning_available()  # one CPU: nothing to separate
    monkeypatch.setattr(harness.os, "cpu_count", lambda: 2)
    assert harness.pinned(0, ["prog"]) == ["taskset", "-c", "0", "prog"]


def test_a_pinned_process_runs_on_its_cpu() -> None:
    code = "import os; print(sorted(os.sched_getaffinity(0)))"
    argv = harness.pinned(harness.LOAD_CPU, [sys.executable, "-c", code])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    if harness.pinning_available():
        assert argv[0] == "taskset"
        assert out.strip() == f"[{harness.LOAD_CPU}]"
    else:
        assert argv[0] == sys.executable


def test_source_env_puts_the_tree_first_and_extra_on_top(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/old")
    monkeypatch.setenv("KEEP", "1")
    env = harness.source_env(Path("/tree/src"), {"KEEP": "2", "NEW": "3"})
    assert env["PYTHONPATH"] == os.pathsep.join(["/tree/src", "/old"])
    assert (env["KEEP"], env["NEW"]) == ("2", "3")
    monkeypatch.delenv("PYTHONPATH")
    assert harness.source_env("/tree/src")["PYTHONPATH"] == "/tree/src"
    assert "PYTHONPATH" not in harness.source_env()


def test_command_line_names_the_script_under_bench() -> None:
    line = harness.command_line("/any/where/bench/matrix.py", ["--quick", "a b"])
    assert line == "python bench/matrix.py --quick 'a b'"


# -- /proc --------------------------------------------------------------------------------


def test_cpu_times_and_faults_grow_with_work() -> None:
    before = harness.cpu_times("self")
    started = time.process_time()
    while time.process_time() - started < 0.1:
        pass
    # A fresh anonymous mapping: its pages fault in as they are touched (a bytearray
    # may reuse pages the allocator already has, and then nothing faults).
    with mmap.mmap(-1, 8 << 20) as pages:
        for i in range(0, len(pages), 4096):
            pages[i] = 1
    used = harness.cpu_times(os.getpid()).since(before)
    assert used.total_s == pytest.approx(used.user_s + used.system_s)
    assert used.total_s >= 0.05
    assert used.minor_faults > 0


def test_memory_and_descriptor_readings_of_this_process(tmp_path: Path) -> None:
    assert harness.rss_bytes() > 1 << 20
    assert harness.status_bytes("self", "VmHWM") >= harness.rss_bytes(os.getpid())
    with pytest.raises(harness.BenchFailure, match="no VmNothing"):
        harness.status_bytes("self", "VmNothing")
    before = harness.fd_count("self")
    with (tmp_path / "f").open("w"):
        assert harness.fd_count(os.getpid()) == before + 1


# -- statistics -----------------------------------------------------------------------


def test_spread_of_an_even_count_takes_the_mean_of_the_middle_two() -> None:
    found = harness.spread([4.0, 1.0, None, 3.0, 2.0])
    assert found == harness.Spread(median=2.5, low=1.0, high=4.0, count=4)
    assert harness.spread([7.0]) == harness.Spread(7.0, 7.0, 7.0, 1)
    assert harness.spread([None]) is None
    assert harness.spread([]) is None


def test_percentile_is_nearest_rank() -> None:
    ordered = [1.0, 2.0, 3.0, 4.0]
    assert [harness.percentile(ordered, q) for q in (0.0, 0.25, 0.5, 0.51, 0.99, 1.0)] == [
        1.0,
        1.0,
        2.0,
        3.0,
        4.0,
        4.0,
    ]
    assert harness.percentile([1.0, math.inf], 0.99) == math.inf  # never interpolated
    with pytest.raises(IndexError):
        harness.percentile([], 0.5)


def test_latency_ms_of_round_trips() -> None:
    samples = [0.003, 0.001] + [0.002] * 98
    assert harness.latency_ms(samples) == {
        "p50_ms": pytest.approx(2.0),
        "p99_ms": pytest.approx(2.0),
        "max_ms": pytest.approx(3.0),
    }
    assert all(math.isnan(v) for v in harness.latency_ms([]).values())


# -- reports --------------------------------------------------------------------------


def test_marked_block_replaces_only_its_own_block() -> None:
    doc = "# Title\n\n<!-- a:begin -->\nold a\n<!-- a:end -->\n\n<!-- b:begin -->\nb\n<!-- b:end -->\n"
    new = harness.marked_block(doc, "a", "new a")
    assert new == doc.replace("old a", "new a")
    assert harness.marked_block(new, "a", "new a") == new


def test_marked_block_appends_with_its_heading_when_missing() -> None:
    assert harness.marked_block("# Doc\n", "x", "body", "## X") == (
        "# Doc\n\n## X\n\n<!-- x:begin -->\nbody\n<!-- x:end -->\n"
    )
    assert harness.marked_block("", "x", "body") == "<!-- x:begin -->\nbody\n<!-- x:end -->\n"


def test_write_marked_block_creates_then_updates_a_file(tmp_path: Path) -> None:
    path = tmp_path / "doc.md"
    harness.write_marked_block(path, "x", "one")
    harness.write_marked_block(path, "x", "two")
    assert path.read_text() == "<!-- x:begin -->\ntwo\n<!-- x:end -->\n"


def test_write_json_writes_whole_files_and_makes_directories(tmp_path: Path) -> None:
    path = tmp_path / "results" / "run.json"
    harness.write_json(path, {"runs": [1, 2]})
    harness.write_json(path, {"runs": [3]}, indent=2)
    assert json.loads(path.read_text()) == {"runs": [3]}
    assert path.read_text().endswith("}\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.json"]  # no .tmp left


# -- the scripts ------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_bench_script_finds_the_harness(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    assert "from harness import" in (ROOT / "bench" / script).read_text()


def test_echo_figures_divide_the_marked_cpu_by_the_round_trips() -> None:
    cpu = harness.CpuTimes
    run = harness.MarkedRun(
        {"errors": "0", "roundtrips": "4000", "seconds": "2.0"},
        cpu(0.3, 0.1, 0),
        cpu(1.0, 0.5, 0),
    )
    figures = run.echo_figures("server x")
    assert figures["rps"] == 2000.0
    assert figures["load_pct"] == 75.0
    assert math.isclose(figures["user_us"], 75.0) and math.isclose(figures["sys_us"], 25.0)
    assert math.isclose(figures["cpu_us"], 100.0)
    wrong = harness.MarkedRun(
        {"errors": "3", "roundtrips": "1", "seconds": "1"}, cpu(0, 0, 0), cpu(0, 0, 0)
    )
    with pytest.raises(harness.BenchFailure, match="server x saw wrong bytes"):
        wrong.echo_figures("server x")
