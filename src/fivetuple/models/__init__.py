"""Concurrency models side by side: the seeds' blocking servers next to the engine.

``fivetuple serve echo --model M`` serves the same app six ways:

- ``iterative``: accept one client, serve it until it leaves, accept the next
  (``IterativeServer``);
- ``threads``: a thread per client (``ThreadsServer``);
- ``processes``: a forked process per client (``ProcessesServer``);
- ``select``, ``poll``, ``epoll``: the engine (``fivetuple.Server``) with that
  readiness backend; ``--model epoll`` is the default server.

The blocking models share one shell (``_base.ModelServer``: bind, banner,
counters, signals, stop) and one loop per client (``_client.serve_client``).
"""

from __future__ import annotations

from .._backends import available_backends
from ._admin import ModelAdmin, model_stats_document, start_model_admin
from ._base import ModelServer, ModelStats
from ._client import BLOCKING_APPS, MODEL_CLOSE_REASONS
from ._iterative import IterativeServer
from ._processes import ProcessesServer
from ._threads import ThreadsServer

#: The blocking models by name.
BLOCKING_MODELS: dict[str, type[ModelServer]] = {
    "iterative": IterativeServer,
    "threads": ThreadsServer,
    "processes": ProcessesServer,
}
#: The engine's models: its readiness backends this OS has, simplest first.
ENGINE_MODELS = tuple(name for name in ("select", "poll", "epoll") if name in available_backends())
#: Every model ``--model`` takes, in the order the seeds tell them.
MODELS = (*BLOCKING_MODELS, *ENGINE_MODELS)

#: serve's options a blocking model honours (its parameter names); any other
#: given on the command line gets one line and exit status 2.
HONOURED_BY_BLOCKING = frozenset(
    {
        "app", "model", "host", "port", "unix_path", "unix_mode", "backlog", "max_conns",
        "idle_timeout", "grace", "sndbuf", "rcvbuf", "admin_addr", "admin_public",
        "verbose", "quiet", "log_json",
    }
)  # fmt: skip
#: Why a blocking model refuses an option, where there is more to say than
#: "an option of the engine's".
REFUSED_BECAUSE: dict[str, str] = {
    "backend": "it waits in accept() and recv(), not in a multiplexer",
    "workers": "it is one server process (--model processes forks one per client)",
    "balance": "it is one server process (--model processes forks one per client)",
    "max_buffer_memory": "a client's bytes wait in the kernel, not in buffers of the server",
    "send_timeout": "--idle-timeout bounds a blocked send too",
    "codec": "it serves raw bytes (--codec raw)",
    "udp": "it serves TCP (or --unix)",
    "reliable": "it serves TCP (or --unix)",
    "admin_tls": "its --admin serves plain HTTP",
    "status_every": "read the /stats of --admin HOST:PORT instead",
}
#: The same, for every option whose name starts so.
REFUSED_BECAUSE_PREFIX: dict[str, str] = {
    "tls_": "it does not serve TLS",
    "udp_": "it serves TCP (or --unix)",
    "proxy_": "it does not read the PROXY protocol",
}
#: Options one blocking model cannot honour though the others can.
REFUSED_BY_MODEL: dict[str, dict[str, str]] = {
    "iterative": {"max_conns": "it serves one client at a time: the next wait in the backlog"},
}
_ENGINES_OPTION = "it is an option of the engine's"


def refused(model: str, given: list[str]) -> list[tuple[str, str]]:
    """The options of ``given`` (serve's parameter names) that ``model`` cannot honour.

    Args:
        model: a name of ``MODELS``.
        given: the parameters given on the command line (``codec`` only if not raw).

    Returns:
        (parameter, why) pairs, in the order of ``given``; empty for the
        engine's models, which honour every option.
    """
    if model not in BLOCKING_MODELS:
        return []
    own = REFUSED_BY_MODEL.get(model, {})
    return [
        (name, own.get(name) or REFUSED_BECAUSE.get(name) or _because_of_prefix(name))
        for name in given
        if name in own or name not in HONOURED_BY_BLOCKING
    ]


def _because_of_prefix(name: str) -> str:
    for prefix, why in REFUSED_BECAUSE_PREFIX.items():
        if name.startswith(prefix):
            return why
    return _ENGINES_OPTION


__all__ = [
    "BLOCKING_APPS",
    "BLOCKING_MODELS",
    "ENGINE_MODELS",
    "HONOURED_BY_BLOCKING",
    "MODELS",
    "MODEL_CLOSE_REASONS",
    "REFUSED_BECAUSE",
    "REFUSED_BECAUSE_PREFIX",
    "REFUSED_BY_MODEL",
    "IterativeServer",
    "ModelAdmin",
    "ModelServer",
    "ModelStats",
    "ProcessesServer",
    "ThreadsServer",
    "model_stats_document",
    "refused",
    "start_model_admin",
]
