"""The toxics' table: every toxic type, its attributes, and how a toxic is checked.

Theory of operation. A *toxic* is a named fault applied to one direction of
a proxy's traffic (toxiproxy's word and vocabulary): a ``type`` (``latency``,
``bandwidth``, ...), a ``stream`` (``upstream``: from the client to the
upstream server; ``downstream``: back), a ``toxicity`` (the probability that
it applies to a given connection, drawn once per connection) and
``attributes`` (numbers in the units the type's table gives). Everything a
person or a program can ask for passes through ``make_toxic`` (a new toxic)
or ``update_toxic`` (a change, in place), which check it against ``TCP_TYPES`` or
``UDP_TYPES`` and raise ``ToxicError`` with one line naming what is wrong:
the command line shows it and exits 2, the HTTP API answers 400 with it.

Nothing here touches a socket or a clock: this module is data and checks.
What each type *does* to bytes is ``_tcp.py`` (the stages, one per type,
dispatched through a table keyed by type name); the one UDP type, ``netsim``,
is netsim's link model, whose attributes are ``netsim.LinkConfig``'s fields.

The command-line form of a toxic (``parse_toxic_spec``) is::

    [NAME=]TYPE[:ATTR=VALUE,...][@upstream|@downstream][%TOXICITY]

for example ``latency:latency=100,jitter=10@upstream%0.5``. The name
defaults to ``TYPE_STREAM`` (toxiproxy's default), the stream to
``downstream``, the toxicity to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import LocalProtocolError
from ..netsim import LinkConfig

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
STREAMS = (UPSTREAM, DOWNSTREAM)
#: The longest toxic name (it is a path segment of the API).
MAX_NAME_CHARS = 64
#: Toxics one proxy holds at most (each one costs every connection a stage).
MAX_TOXICS = 32


class ToxicError(ValueError):
    """A toxic that cannot be made: unknown type, bad attribute, impossible value, ...

    The message is one line that names the field and what it must be.
    """


@dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute of a toxic type.

    Args:
        name: its key in ``attributes``.
        unit: what its number counts (``ms``, ``KB/s``, ``bytes``, ``us``).
        default: its value when not given; None: it must be given.
        integer: only whole numbers.
        help: one line for the docs and for errors.
    """

    name: str
    unit: str
    default: float | None
    integer: bool = False
    help: str = ""


@dataclass(frozen=True, slots=True)
class ToxicType:
    """A kind of toxic: what it does, its attributes, and a check across them.

    Args:
        name: the ``type`` a toxic gives.
        summary: one line: what it does.
        attributes: its attributes, in the order the docs list them.
        check: given the complete attributes, a reason they are impossible
            together, or None.
    """

    name: str
    summary: str
    attributes: tuple[Attribute, ...]
    check: Callable[[Mapping[str, Any]], str | None] | None = None

    def attribute(self, name: str) -> Attribute | None:
        """The attribute called ``name``, or None."""
        for each in self.attributes:
            if each.name == name:
                return each
        return None


def _slicer_check(attributes: Mapping[str, Any]) -> str | None:
    if attributes["average_size"] < 1:
        return "average_size must be at least 1 byte"
    if attributes["size_variation"] >= attributes["average_size"]:
        return "size_variation must be less than average_size"
    return None


#: The TCP toxics: toxiproxy's names, attributes and units.
TCP_TYPES: dict[str, ToxicType] = {
    each.name: each
    for each in (
        ToxicType(
            "latency",
            "delay every chunk by latency +/- jitter (order kept)",
            (
                Attribute("latency", "ms", None, help="delay added to every chunk"),
                Attribute("jitter", "ms", 0.0, help="plus or minus up to this much, uniformly"),
            ),
        ),
        ToxicType(
            "bandwidth",
            "pass at most rate KB/s (1 KB = 1000 bytes); 0: no limit",
            (Attribute("rate", "KB/s", None, help="kilobytes (1000 bytes) a second"),),
        ),
        ToxicType(
            "slicer",
            "cut each chunk into pieces of average_size +/- size_variation, delay apart",
            (
                Attribute("average_size", "bytes", None, integer=True, help="mean piece size"),
                Attribute("size_variation", "bytes", 0, integer=True, help="plus or minus"),
                Attribute("delay", "us", 0, help="microseconds between two pieces"),
            ),
            _slicer_check,
        ),
        ToxicType(
            "timeout",
            "stop the data; close the connection after timeout ms (0: never)",
            (Attribute("timeout", "ms", 0.0, help="0 holds the data until removed"),),
        ),
        ToxicType(
            "reset_peer",
            "timeout ms after the first data, reset the connection (RST)",
            (Attribute("timeout", "ms", 0.0, help="wait this long after the first data"),),
        ),
        ToxicType(
            "limit_data",
            "pass the first bytes bytes, then close the connection",
            (Attribute("bytes", "bytes", None, integer=True, help="bytes let through"),),
        ),
        ToxicType(
            "slow_close",
            "delay the close (EOF) by delay ms",
            (Attribute("delay", "ms", None, help="how long the EOF is held"),),
        ),
    )
}

#: ``netsim.LinkConfig`` field -> the kind of value it takes in JSON.
NETSIM_FIELDS: dict[str, str] = {
    "delay_s": "number",
    "jitter_s": "number",
    "loss": "number",
    "burst_enter": "number",
    "burst_exit": "number",
    "burst_loss": "number",
    "duplicate": "number",
    "reorder": "number",
    "reorder_delay_s": "number",
    "corrupt": "number",
    "rate_bps": "number or null",
    "queue_bytes": "integer or null",
    "overhead_bytes": "integer",
    "blackouts": "list of [start, end]",
    "mtu": "integer or null",
}
assert set(NETSIM_FIELDS) == {f.name for f in fields(LinkConfig)}, "netsim changed"

NETSIM = "netsim"
#: The UDP toxic: netsim's link model, one direction, its fields as attributes.
UDP_TYPES: dict[str, ToxicType] = {
    NETSIM: ToxicType(
        NETSIM,
        "netsim's link model on the datagrams of one direction (LinkConfig's fields)",
        tuple(
            Attribute(name, kind, getattr(LinkConfig(), name))
            for name, kind in NETSIM_FIELDS.items()
        ),
    )
}


class Toxic:
    """One toxic of a proxy: what it is, where it applies, how often, and its attributes.

    Attributes are complete (every attribute of the type, defaults filled in)
    and checked. A proxy's stages read them live: changing them through the
    API changes what the connections already open get from then on.
    """

    __slots__ = ("attributes", "name", "stream", "toxicity", "type")

    def __init__(
        self, name: str, type: str, stream: str, toxicity: float, attributes: dict[str, Any]
    ) -> None:
        self.name = name
        self.type = type
        self.stream = stream
        self.toxicity = toxicity
        self.attributes = attributes

    def document(self) -> dict[str, Any]:
        """The toxic as toxiproxy's API shows it (a JSON object)."""
        attributes = dict(self.attributes)
        if "blackouts" in attributes:
            attributes["blackouts"] = [list(window) for window in attributes["blackouts"]]
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": attributes,
        }

    def link_config(self) -> LinkConfig:
        """A ``netsim`` toxic's attributes as a ``netsim.LinkConfig``."""
        return LinkConfig(**self.attributes)

    def __repr__(self) -> str:
        return f"<Toxic {self.name} {self.type} {self.stream} {self.toxicity}>"


def make_toxic(doc: Mapping[str, Any], types: Mapping[str, ToxicType]) -> Toxic:
    """A new toxic from its JSON object (``name``, ``type``, ``stream``, ``toxicity``,
    ``attributes``; only ``type`` is required).

    Raises:
        ToxicError: anything missing, unknown or impossible (the message says what).
    """
    if not isinstance(doc, Mapping):
        raise ToxicError(
            "a toxic is a JSON object with type, and name, stream, toxicity, attributes"
        )
    unknown = sorted(set(doc) - {"name", "type", "stream", "toxicity", "attributes"})
    if unknown:
        raise ToxicError(
            f"unknown field {unknown[0]!r}; a toxic has name, type, stream, toxicity, attributes"
        )
    kind = doc.get("type")
    if not isinstance(kind, str) or kind not in types:
        raise ToxicError(f"unknown toxic type {kind!r}; the types are {', '.join(types)}")
    stream = doc.get("stream", DOWNSTREAM)
    if stream not in STREAMS:
        raise ToxicError(f"stream {stream!r}: must be upstream or downstream")
    name = doc.get("name") or f"{kind}_{stream}"
    check_name(name)
    toxicity = _toxicity(doc.get("toxicity", 1.0))
    attributes = _attributes(types[kind], {}, doc.get("attributes", {}))
    return Toxic(name, kind, stream, toxicity, attributes)


def update_toxic(toxic: Toxic, doc: Mapping[str, Any], types: Mapping[str, ToxicType]) -> None:
    """Apply the changes of ``doc`` (``toxicity`` and some ``attributes``) to ``toxic``,
    in place: the stages of open connections read it live.

    Raises:
        ToxicError: an impossible change (the type, stream or name cannot
            change); ``toxic`` is then left as it was.
    """
    if not isinstance(doc, Mapping):
        raise ToxicError("an update is a JSON object with toxicity and/or attributes")
    for field in ("name", "type", "stream"):
        if field in doc and doc[field] != getattr(toxic, field):
            raise ToxicError(
                f"{field} cannot change ({toxic.name} is {getattr(toxic, field)!r}); "
                "delete the toxic and add a new one"
            )
    unknown = sorted(set(doc) - {"name", "type", "stream", "toxicity", "attributes"})
    if unknown:
        raise ToxicError(f"unknown field {unknown[0]!r}; an update has toxicity and attributes")
    toxicity = _toxicity(doc.get("toxicity", toxic.toxicity))
    attributes = _attributes(types[toxic.type], toxic.attributes, doc.get("attributes", {}))
    toxic.toxicity = toxicity
    toxic.attributes = attributes


def check_name(name: Any) -> None:
    """Refuse a name that is not 1 to MAX_NAME_CHARS of letters, digits, "_", "-", ".".

    Raises:
        ToxicError: it is not.
    """
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= MAX_NAME_CHARS
        or not all(c.isalnum() or c in "_-." for c in name)
        or not name.isascii()
    ):
        raise ToxicError(f"name {name!r}: 1 to {MAX_NAME_CHARS} letters, digits, '_', '-' or '.'")


def _toxicity(value: Any) -> float:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ToxicError(f"toxicity {value!r}: must be a number from 0 to 1")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _attributes(kind: ToxicType, current: Mapping[str, Any], given: Any) -> dict[str, Any]:
    """``current`` (or the defaults) with ``given`` applied, every value checked."""
    if not isinstance(given, Mapping):
        raise ToxicError("attributes must be a JSON object")
    names = [each.name for each in kind.attributes]
    for key in given:
        if key not in names:
            raise ToxicError(
                f"{kind.name} has no attribute {key!r}; its attributes are {', '.join(names)}"
            )
    if kind.name == NETSIM:
        return _netsim_attributes(current, given)
    out: dict[str, Any] = {}
    for attribute in kind.attributes:
        value = given.get(attribute.name, current.get(attribute.name, attribute.default))
        if value is None:
            raise ToxicError(
                f"{kind.name} needs {attribute.name} ({attribute.unit}: {attribute.help})"
            )
        out[attribute.name] = _value(kind.name, attribute, value)
    if kind.check is not None:
        reason = kind.check(out)
        if reason is not None:
            raise ToxicError(f"{kind.name}: {reason}")
    return out


def _value(kind: str, attribute: Attribute, value: Any) -> float | int:
    what = "a whole number" if attribute.integer else "a number"
    if not _is_number(value) or value < 0 or (attribute.integer and value != int(value)):
        raise ToxicError(
            f"{kind}.{attribute.name} {value!r}: must be {what} of {attribute.unit}, 0 or more"
        )
    return int(value) if attribute.integer else value


def _netsim_attributes(current: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    base = (
        dict(current)
        if current
        else {f.name: getattr(LinkConfig(), f.name) for f in fields(LinkConfig)}
    )
    for key, value in given.items():
        kind = NETSIM_FIELDS[key]
        if key == "blackouts":
            value = _windows(value)
        elif value is None and "null" in kind:
            pass
        elif not _is_number(value) or (kind.startswith("integer") and value != int(value)):
            raise ToxicError(f"netsim.{key} {value!r}: must be {kind}")
        elif kind.startswith("integer"):
            value = int(value)
        base[key] = value
    try:
        LinkConfig(**base)
    except LocalProtocolError as exc:
        raise ToxicError(f"netsim: {exc}".replace("LinkConfig.", "")) from None
    return base


def _windows(value: Any) -> tuple[tuple[float, float], ...]:
    reason = "netsim.blackouts: must be a list of [start, end] pairs of seconds"
    if not isinstance(value, (list, tuple)):
        raise ToxicError(reason)
    out = []
    for window in value:
        if (
            not isinstance(window, (list, tuple))
            or len(window) != 2
            or not all(_is_number(each) for each in window)
        ):
            raise ToxicError(reason)
        out.append((float(window[0]), float(window[1])))
    return tuple(out)


def netsim_attributes(config: LinkConfig) -> dict[str, Any]:
    """A ``netsim.LinkConfig`` as a ``netsim`` toxic's attributes."""
    return {f.name: getattr(config, f.name) for f in fields(LinkConfig)}


def parse_toxic_spec(spec: str, types: Mapping[str, ToxicType]) -> Toxic:
    """A toxic from its command-line form ``[NAME=]TYPE[:ATTR=VALUE,...][@STREAM][%TOXICITY]``.

    A value is a number, or ``none`` (for netsim's optional fields).

    Raises:
        ToxicError: the form is wrong or the toxic impossible (the message says what).
    """
    doc: dict[str, Any] = {}
    rest = spec.strip()
    head, sep, tail = rest.rpartition("%")
    if sep:
        doc["toxicity"] = _number(tail, f"toxicity in {spec!r}")
        rest = head
    head, sep, tail = rest.rpartition("@")
    if sep:
        doc["stream"] = tail
        rest = head
    head, sep, tail = rest.partition(":")
    name, eq, kind = head.rpartition("=")
    if eq:
        doc["name"] = name
    doc["type"] = kind
    if sep:
        attributes: dict[str, Any] = {}
        for pair in tail.split(","):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise ToxicError(
                    f"{spec!r}: attributes are ATTR=VALUE separated by commas, "
                    "e.g. latency:latency=100,jitter=10"
                )
            attributes[key.strip()] = (
                None if value.strip().lower() in ("none", "null") else _number(value, key)
            )
        doc["attributes"] = attributes
    try:
        return make_toxic(doc, types)
    except ToxicError as exc:
        raise ToxicError(f"--toxic {spec!r}: {exc}") from None


def _number(text: str, what: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise ToxicError(f"{what}: {text.strip()!r} is not a number") from None
    return int(value) if value.is_integer() and "." not in text else value


class ToxicTable:
    """The toxics of one proxy, by name, in the order they were added.

    Args:
        types: the toxic types this proxy can apply (``TCP_TYPES`` or ``UDP_TYPES``).
    """

    __slots__ = ("_toxics", "types")

    def __init__(self, types: Mapping[str, ToxicType]) -> None:
        self.types = types
        self._toxics: dict[str, Toxic] = {}

    def add(self, toxic: Toxic) -> None:
        """Add ``toxic``.

        Raises:
            ToxicError: a toxic of that name exists, or ``MAX_TOXICS`` do.
        """
        if toxic.name in self._toxics:
            raise ToxicError(
                f"a toxic named {toxic.name!r} exists already; give another name, "
                "or update it (POST /proxies/NAME/toxics/TOXIC)"
            )
        if len(self._toxics) >= MAX_TOXICS:
            raise ToxicError(f"at most {MAX_TOXICS} toxics per proxy")
        self._toxics[toxic.name] = toxic

    def remove(self, name: str) -> Toxic:
        """Take the toxic ``name`` out and return it.

        Raises:
            KeyError: there is none of that name.
        """
        return self._toxics.pop(name)

    def get(self, name: str) -> Toxic | None:
        """The toxic called ``name``, or None."""
        return self._toxics.get(name)

    def __iter__(self) -> Iterator[Toxic]:
        return iter(list(self._toxics.values()))

    def __len__(self) -> int:
        return len(self._toxics)
