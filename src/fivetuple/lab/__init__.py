"""``fivetuple lab``: the claims of the socket texts, shown on this machine.

Each experiment starts real servers and clients on loopback, reads what the
kernel shows (``ss``, ``/proc``, an errno), prints a short table and says which
claim it shows; docs/lab.md has every one with its output.
"""

from ._procs import MODELS, LabFailure
from ._runner import EXPERIMENTS, Options, listing, run_experiment
from ._table import Column, Result

__all__ = [
    "EXPERIMENTS",
    "MODELS",
    "Column",
    "LabFailure",
    "Options",
    "Result",
    "listing",
    "run_experiment",
]
