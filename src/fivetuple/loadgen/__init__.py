"""``fivetuple bench``: a load generator on fivetuple's own engine.

``run_bench(BenchConfig(...))`` returns the report that ``--json`` prints.
"""

from ._config import MODES, BenchConfig, parse_pids, parse_source_addrs
from ._report import failed, render
from ._run import run_bench

__all__ = [
    "MODES",
    "BenchConfig",
    "failed",
    "parse_pids",
    "parse_source_addrs",
    "render",
    "run_bench",
]
