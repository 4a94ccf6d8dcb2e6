"""The readiness backend, chosen in one place.

Theory of operation: like Redis's ae.c, which includes ae_epoll.c, ae_evport.c,
ae_kqueue.c or ae_select.c by what the OS offers, this is the one module that knows
every backend. The loop asks it for a poller (``make_poller``), the command line and
the tests for the names (``available_backends``). A backend is named for the
function of the ``select`` module it wraps, so "does this OS have it" is
``hasattr(select, name)``; the table below is in order of preference.

The backend modules import nothing of the package but ``_poller`` (the event bits
and the ``Poller`` interface), so nothing this module imports imports it back: the
imports form a DAG (issue 13: the choice used to live in ``_poller``, which the
select backend imports, and so the two imported each other).
"""

from __future__ import annotations

import select
from collections.abc import Callable

from ._poller import Poller
from ._poller_epoll import EpollPoller
from ._poller_poll import PollPoller
from ._poller_select import SelectPoller
from .errors import SetupError

#: Every backend by name, best first: epoll is O(ready) per wait, poll
#: O(watched), and select O(highest fd) and limited to FD_SETSIZE descriptors.
#: Each class is checked against ``Poller`` here, by the annotation.
POLLERS: dict[str, Callable[[], Poller]] = {
    "epoll": EpollPoller,
    "poll": PollPoller,
    "select": SelectPoller,
}


def available_backends() -> list[str]:
    """Return the names of the backends this OS has, best first."""
    return [name for name in POLLERS if hasattr(select, name)]


def make_poller(backend: str | None = None) -> Poller:
    """Create a poller by name, or the best this OS has when ``backend`` is None.

    Args:
        backend: one of ``available_backends()``, or None for the first of them.

    Returns:
        A new poller watching nothing; the caller closes it.

    Raises:
        SetupError: the backend is unknown or this OS lacks it (one line that
            names the choices).
    """
    names = available_backends()
    name = backend or names[0]
    if name not in names:
        raise SetupError(
            f"backend {name!r} is not available on this system; choose one of: {', '.join(names)}"
        )
    return POLLERS[name]()
