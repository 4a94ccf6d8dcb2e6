"""The fuzz rule in CI, bounded: every seed and seeded mutations of it decode or
raise RemoteProtocolError, whole and byte by byte (fuzz/harness.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))

from harness import CORPUS, MAKERS, mutate_and_check, seeds

MUTATIONS = 300


@pytest.mark.parametrize("codec", sorted(MAKERS))
def test_seed_corpus_exists(codec: str) -> None:
    assert len(seeds(codec)) >= 3, f"no seed corpus under {CORPUS / codec}"


@pytest.mark.parametrize("codec", sorted(MAKERS))
@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_inputs_parse_or_raise_remote_protocol_error(codec: str, seed: int) -> None:
    # Any other exception escapes check() and fails the test; the seed is in the id.
    assert mutate_and_check(codec, MUTATIONS, seed) == len(seeds(codec)) + MUTATIONS
