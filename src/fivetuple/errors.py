"""The one exception hierarchy of fivetuple.

Who is at fault decides the class (after h11 and trio):

- ``LocalProtocolError``: our caller misused the API (wrote after close, ...).
- ``RemoteProtocolError``: the peer sent something illegal (codecs raise only this).
- ``ClosedResourceError``: you closed it, and then used it.
- ``BrokenResourceError``: the peer or the network closed it; the ``OSError``
  that told us is chained as ``__cause__``.
- ``SetupError``: a person's mistake when starting something (address in use,
  permission denied, unknown host, bad option). Its message is one line that
  names the problem and the fix; the command line prints it and exits 2.
"""

from __future__ import annotations

from collections.abc import Mapping


class FivetupleError(Exception):
    """Base class of every error fivetuple raises on purpose."""


class LocalProtocolError(FivetupleError):
    """Our caller used the API in a way its documentation forbids."""


class RemoteProtocolError(FivetupleError):
    """The peer sent bytes that break the protocol.

    Attributes:
        reason: a short, stable, machine-readable reason such as ``"bad-magic"``.
    """

    def __init__(self, message: str, *, reason: str = "protocol-error") -> None:
        super().__init__(message)
        self.reason = reason


class ClosedResourceError(FivetupleError):
    """The resource was closed by this side and then used."""


class BrokenResourceError(FivetupleError):
    """The peer or the network broke the resource (reset, broken pipe, ...)."""


class SetupError(FivetupleError):
    """Something could not start because of how it was asked to start.

    The message is a single line naming the address or parameter and what to
    do. The library speaks of its own parameters (``max_conns``); a command
    line speaks of its flags (``--max-conns``). So a message names each
    parameter as a ``{name}`` placeholder listed in ``params``: ``str()``
    fills in the parameter's name, ``naming()`` whatever the caller calls it.

    Args:
        message: the line, with ``{name}`` for each parameter in ``params``.
        params: the parameters the message names.

    Example::

        SetupError("{backlog} must be 0 or more, not -1", params=("backlog",))
        # str(): "backlog must be 0 or more, not -1"
        # .naming({"backlog": "--backlog"}): "--backlog must be 0 or more, not -1"
    """

    def __init__(self, message: str, *, params: tuple[str, ...] = ()) -> None:
        self.template = message
        self.params = params
        super().__init__(self.naming({}))

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with each parameter called ``names[param]`` (its own name if absent)."""
        text = self.template
        for param in self.params:
            text = text.replace("{" + param + "}", names.get(param, param))
        return text
