"""bench/reliable_bench.py: both halves run on the virtual clock, deliver, and repeat themselves.

The bench extra (which installs kcp) is not installed by .ci/run, so the KCP
tests skip there; the fivetuple half needs nothing but the package.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT

BENCH = ROOT / "bench" / "reliable_bench.py"
#: Under pytest-timeout's 60 s (pyproject.toml); a quick KCP run takes well under a second.
RUN_TIMEOUT_S = 50.0


def quick_run(json_path: Path, only: str = "kcp") -> tuple[str, dict[str, Any]]:
    if only == "kcp":
        pytest.importorskip("kcp")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", only, "--json", str(json_path)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(json_path.read_text())


def test_quick_kcp_run_delivers(tmp_path: Path) -> None:
    stdout, results = quick_run(tmp_path / "results.json")
    assert results["implementations"] == ["kcp"]
    assert results["skipped"] == {}
    bulk = [r for r in results["runs"] if r["scenario"] == "bulk"]
    assert {r["loss_pct"] for r in bulk} == {0, 2, 5, 10}
    for run in bulk:
        assert run["failure"] is None, run
        assert run["goodput_mbps"] > 0, run
        assert run["messages_delivered"] > 0, run
    (stream,) = [r for r in results["runs"] if r["scenario"] == "stream"]
    assert stream["failure"] is None
    assert stream["sent"] == 3 * 60
    assert stream["delivered"] == stream["sent"]
    assert 0 < stream["p50_ms"] <= stream["p99_ms"] <= stream["max_ms"]
    assert stdout.startswith("# Reliable delivery")
    assert "Command: `python bench/reliable_bench.py --quick --only kcp --json" in stdout
    assert "| goodput, Mbit/s |" in stdout


def test_quick_kcp_run_is_deterministic(tmp_path: Path) -> None:
    first = quick_run(tmp_path / "a.json")[1]
    second = quick_run(tmp_path / "b.json")[1]
    for run in first["runs"] + second["runs"]:
        del run["wall_s"]
    assert first["runs"] == second["runs"]


def test_quick_fivetuple_run_delivers_and_keeps_its_retransmissions_to_the_losses(
    tmp_path: Path,
) -> None:
    _, results = quick_run(tmp_path / "f.json", only="fivetuple")
    bulk = {r["loss_pct"]: r for r in results["runs"] if r["scenario"] == "bulk"}
    for loss, run in bulk.items():
        assert run["failure"] is None, run
        assert run["goodput_mbps"] > 0, run
        p = loss / 100
        assert run["retransmitted_ratio"] <= 1.25 * p / (1 - p) + 0.005, run
    (stream,) = [r for r in results["runs"] if r["scenario"] == "stream"]
    assert stream["delivered"] == stream["sent"] == 3 * 60


LISTENER_BENCH = BENCH.parent / "reliable_listener_bench.py"


def test_the_listener_bench_runs_both_versions_of_the_code(tmp_path: Path) -> None:
    """bench/reliable_listener_bench.py, tiny: the idle connections are made, every
    scenario yields a number for the new code and for HEAD's (read with git show)."""
    if not (ROOT / ".git").exists():
        pytest.skip("the old code is read from git, and this is no git checkout")
    json_path = tmp_path / "listener.json"
    options = ["--sizes", "20,200", "--runs", "1", "--events", "20", "--budget", "0.2"]
    options += ["--before-ref", "HEAD"]  # any commit will do here (a clone may be shallow)
    done = subprocess.run(
        [sys.executable, str(LISTENER_BENCH), *options, "--json", str(json_path)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(json_path.read_text())
    assert [(row["impl"].split()[0], row["idle"]) for row in rows] == [
        ("after", 20),
        ("after", 200),
        ("before", 20),
        ("before", 200),
    ]
    for row in rows:
        assert all(row[s]["median_us"] > 0 for s in ("garbage", "data", "timer")), row
        assert row["memory_per_idle_bytes"] >= 0  # RSS moves by pages: 0 for 20 is fine
    assert "| code | idle connections |" in done.stdout
