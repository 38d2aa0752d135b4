"""Write runnel stream functions in Python.

A function is a filter, a map or a scorer. Write one plain function (or a
class, when it needs state built from its config), put the matching decorator
on it, and build the folder with ``runnel build``::

    import runnel

    @runnel.filter
    def errors_only(record: runnel.Record) -> bool:
        return "error" in record.value_str()

    @runnel.filter
    class Threshold:
        def __init__(self, config: runnel.Config):
            self.field = config.require("field")
            self.min = config.float("min", 0.0)

        def filter(self, record: runnel.Record) -> bool:
            x = record.value_json().get(self.field)
            return isinstance(x, (int, float)) and x >= self.min

What each kind receives and returns:

=====================  ==========================================  ==========================
decorator              on                                          per record
=====================  ==========================================  ==========================
``@runnel.filter``     ``def f(record) -> bool``, or a class with  keep (true) or drop
                       ``__init__(config)`` and ``filter(record)``
``@runnel.map``        ``def f(record)``, or a class with          zero or more ``Output``
                       ``__init__(config)`` and ``map(record)``    (one, a list, or None)
``@runnel.scorer``     a class with ``__init__(config, model)``    one ``Output``
                       and ``score(record)``
=====================  ==========================================  ==========================

A function (rather than a class) may have its config checked and kept by an
``@runnel.init`` function, called once per instance with the ``Config``.

Raising ``RecordError`` is an expected failure of that record: the host sends
the record to the dead-letter topic with the message, and the stream goes on.
Any other exception is a bug, like a Rust panic: the call traps with the
traceback in its message, the host throws the instance away and isolates the
record. An exception in ``__init__`` (or ``@runnel.init``) refuses the
deployment with its message.

Records are views into the batch the host sent (``memoryview``): a field is
decoded when it is read, and nothing is copied until you ask for ``bytes``,
``str`` or JSON.

Instance state lives at module level: the component makes its exported
object anew for every call, so this SDK keeps your function (and the object
your class made) in a module global, made once per instance by ``init``.
"""

from __future__ import annotations

import json as _json
import struct as _struct

__all__ = [
    "WIT_PACKAGE",
    "OUTPUT_HEADER",
    "Config",
    "ConfigError",
    "Output",
    "Record",
    "RecordError",
    "filter",
    "init",
    "map",
    "scorer",
]

#: The WIT package this SDK was made for; ``runnel build`` builds against the
#: copy in ``runnel/wit``, and a host refuses a component of a version it
#: does not speak.
WIT_PACKAGE = "runnel:stream@0.1.0"

#: The header an output picks its output topic with (see ``Output.to``).
OUTPUT_HEADER = "runnel-output"

# The frame header: partition s32, offset s64, timestamp s64, key length u32,
# value length u32, header count u32; little-endian, unaligned.
_HEAD = _struct.Struct("<iqqIII")
_HEAD_SIZE = _HEAD.size
_U32 = _struct.Struct("<I")
_NONE_LEN = 0xFFFF_FFFF
_NO_TIME = -(1 << 63)
_OUT_HEAD = _struct.Struct("<iqqIII")


class RecordError(Exception):
    """An expected failure of one record: it goes to the dead-letter topic
    with this message, and the stream goes on."""


class ConfigError(Exception):
    """A config that cannot work: the deployment is refused with this message."""


class Config(dict):
    """The deployment's settings (``--config key=value``), as a ``dict`` of
    strings, with helpers that fail with a message naming the key."""

    def require(self, key: str) -> str:
        """The value of ``key``; refuses the deployment when it is not set."""
        value = self.get(key)
        if value is None:
            raise ConfigError(f"missing config `{key}` (set it with --config {key}=...)")
        return value

    def float(self, key: str, default: float | None = None) -> float | None:
        """``key`` as a number, or ``default`` when it is not set."""
        value = self.get(key)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"config `{key}` = {value!r} is not a number") from None

    def int(self, key: str, default: int | None = None) -> int | None:
        """``key`` as an integer, or ``default`` when it is not set."""
        value = self.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"config `{key}` = {value!r} is not an integer") from None


class Record:
    """One input record: a view into the batch's bytes.

    ``key`` and ``value`` are ``memoryview``s (or ``None`` when absent); use
    ``bytes(record.value)``, ``value_str()`` or ``value_json()`` to copy.
    """

    __slots__ = ("_data", "_at", "_head")

    def __init__(self, data: memoryview, at: int):
        self._data = data
        self._at = at
        self._head = None

    @classmethod
    def of(
        cls,
        value: bytes | str | None = None,
        key: bytes | str | None = None,
        headers: list[tuple[str, bytes | str | None]] | None = None,
        partition: int = 0,
        offset: int = 0,
        timestamp_ms: int | None = None,
    ) -> Record:
        """A record for unit tests, framed as the host frames it."""
        frame = bytearray()
        _frame(frame, key, value, headers or (), timestamp_ms, partition, offset)
        return cls(memoryview(bytes(frame)), 0)

    def _h(self):
        head = self._head
        if head is None:
            head = self._head = _HEAD.unpack_from(self._data, self._at)
        return head

    @property
    def partition(self) -> int:
        return self._h()[0]

    @property
    def offset(self) -> int:
        return self._h()[1]

    @property
    def timestamp_ms(self) -> int | None:
        t = self._h()[2]
        return None if t == _NO_TIME else t

    @property
    def key(self) -> memoryview | None:
        klen = self._h()[3]
        if klen == _NONE_LEN:
            return None
        start = self._at + _HEAD_SIZE
        return self._data[start : start + klen]

    @property
    def value(self) -> memoryview | None:
        _, _, _, klen, vlen, _ = self._h()
        if vlen == _NONE_LEN:
            return None
        start = self._at + _HEAD_SIZE + (0 if klen == _NONE_LEN else klen)
        return self._data[start : start + vlen]

    def value_str(self) -> str:
        """The value as UTF-8 text; a ``RecordError`` when it is absent or not UTF-8."""
        value = self.value
        if value is None:
            raise RecordError("the record has no value")
        try:
            return str(value, "utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"the value is not UTF-8: {e}") from None

    def key_str(self) -> str | None:
        """The key as UTF-8 text, or ``None``; a ``RecordError`` when it is not UTF-8."""
        key = self.key
        if key is None:
            return None
        try:
            return str(key, "utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"the key is not UTF-8: {e}") from None

    def value_json(self):
        """The value parsed as JSON; a ``RecordError`` naming the problem when it is not."""
        value = self.value
        if value is None:
            raise RecordError("the record has no value")
        try:
            return _json.loads(bytes(value))
        except (ValueError, UnicodeDecodeError) as e:
            raise RecordError(f"the value is not the JSON expected: {e}") from None

    @property
    def headers(self) -> list[tuple[str, memoryview | None]]:
        """The headers in order: (name, value or ``None``). Names are UTF-8
        (the host passes a record whose names are not as a failure)."""
        _, _, _, klen, vlen, count = self._h()
        data = self._data
        at = self._at + _HEAD_SIZE
        at += 0 if klen == _NONE_LEN else klen
        at += 0 if vlen == _NONE_LEN else vlen
        out = []
        for _ in range(count):
            (n,) = _U32.unpack_from(data, at)
            at += 4
            name = str(data[at : at + n], "utf-8")
            at += n
            (m,) = _U32.unpack_from(data, at)
            at += 4
            if m == _NONE_LEN:
                out.append((name, None))
            else:
                out.append((name, data[at : at + m]))
                at += m
        return out

    def header(self, name: str) -> memoryview | None:
        """The value of the last header called ``name``, or ``None``."""
        found = None
        for n, v in self.headers:
            if n == name:
                found = v
        return found

    def __repr__(self) -> str:
        return (
            f"Record(partition={self.partition}, offset={self.offset}, "
            f"key={_show(self.key)}, value={_show(self.value)})"
        )


def _show(b):
    return None if b is None else bytes(b[:64])


def _bytes(x, what):
    if x is None or isinstance(x, (bytes, bytearray, memoryview)):
        return x
    if isinstance(x, str):
        return x.encode("utf-8")
    raise TypeError(f"an output's {what} is bytes, str or None, not {type(x).__name__}")


class Output:
    """A record to write to the output topic. Its key defaults to none (pass
    the input's to keep it), its timestamp to the input record's."""

    __slots__ = ("key", "value", "headers", "timestamp_ms")

    def __init__(
        self,
        value: bytes | str | None,
        key: bytes | str | memoryview | None = None,
        headers: list[tuple[str, bytes | str | None]] | None = None,
        timestamp_ms: int | None = None,
    ):
        self.value = _bytes(value, "value")
        self.key = _bytes(key, "key")
        self.headers = list(headers) if headers else []
        self.timestamp_ms = timestamp_ms

    @classmethod
    def json(cls, obj, key=None, headers=None, timestamp_ms=None) -> Output:
        """An output whose value is ``obj`` as compact JSON."""
        return cls(
            _json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(),
            key,
            headers,
            timestamp_ms,
        )

    def with_header(self, name: str, value: bytes | str | None) -> Output:
        self.headers.append((name, value))
        return self

    def to(self, output: str) -> Output:
        """Picks the deployment's output topic (or output name) to write to."""
        self.headers = [(n, v) for n, v in self.headers if n != OUTPUT_HEADER]
        self.headers.append((OUTPUT_HEADER, output))
        return self

    def __eq__(self, other):
        return isinstance(other, Output) and (
            _b(self.key),
            _b(self.value),
            [(n, _b(_bytes(v, "header"))) for n, v in self.headers],
            self.timestamp_ms,
        ) == (
            _b(other.key),
            _b(other.value),
            [(n, _b(_bytes(v, "header"))) for n, v in other.headers],
            other.timestamp_ms,
        )

    def __repr__(self) -> str:
        return f"Output(value={_show(self.value)}, key={_show(self.key)}, headers={self.headers})"


def _b(x):
    return None if x is None else bytes(x)


def _frame(out: bytearray, key, value, headers, timestamp_ms, partition=-1, offset=-1):
    key = _bytes(key, "key")
    value = _bytes(value, "value")
    out += _OUT_HEAD.pack(
        partition,
        offset,
        _NO_TIME if timestamp_ms is None else timestamp_ms,
        _NONE_LEN if key is None else len(key),
        _NONE_LEN if value is None else len(value),
        len(headers),
    )
    if key is not None:
        out += key
    if value is not None:
        out += value
    for name, v in headers:
        n = name.encode("utf-8")
        out += _U32.pack(len(n))
        out += n
        v = _bytes(v, "header value")
        if v is None:
            out += _U32.pack(_NONE_LEN)
        else:
            out += _U32.pack(len(v))
            out += v


# ---------------------------------------------------------------------------
# Registration: what the decorators found, and the instance's state.

_KINDS = ("filter", "map", "scorer")


class _Function:
    __slots__ = ("kind", "target", "is_class", "call", "init_fn")

    def __init__(self, kind, target):
        self.kind = kind
        self.target = target
        self.is_class = isinstance(target, type)
        self.call = None  # the per-record callable, once init ran
        self.init_fn = None


_registered: _Function | None = None


def _register(kind, target):
    global _registered
    if _registered is not None and _registered.target is not target:
        raise TypeError(
            f"a component implements one function: @{_registered.kind} is already on "
            f"{_registered.target.__qualname__}, so @runnel.{kind} cannot also go on "
            f"{target.__qualname__}"
        )
    if kind == "scorer" and not isinstance(target, type):
        raise TypeError(
            "@runnel.scorer goes on a class built from the config and the model's bytes: "
            "class MyScorer: def __init__(self, config, model): ...; def score(self, record): ..."
        )
    method = "score" if kind == "scorer" else kind
    if isinstance(target, type) and not callable(getattr(target, method, None)):
        raise TypeError(f"@runnel.{kind} on a class needs a method `{method}(self, record)`")
    init_fn = _registered.init_fn if _registered is not None else _pending_init
    _registered = _Function(kind, target)
    _registered.init_fn = init_fn
    return target


def filter(target):  # noqa: A001 - the decorator's name is the kind's
    """Keeps (true) or drops (false) each record."""
    return _register("filter", target)


def map(target):  # noqa: A001
    """Turns each record into zero or more ``Output``s."""
    return _register("map", target)


def scorer(target):
    """Scores each record with a model: a class built from ``(config, model)``."""
    return _register("scorer", target)


_pending_init = None


def init(fn):
    """Marks ``fn(config)`` to be called once per instance, before any record
    (for a function; a class has ``__init__``). Raise to refuse the deployment."""
    global _pending_init
    _pending_init = fn
    if _registered is not None:
        _registered.init_fn = fn
    return fn


def _kind() -> str | None:
    """The kind of function registered, for ``runnel build``."""
    return None if _registered is None else _registered.kind


# ---------------------------------------------------------------------------
# The calls the component's exports make (see ``runnel._world``). They take
# and return plain Python values, so they run natively in unit tests.


def _init(config: list[tuple[str, str]], model: bytes | None = None) -> str | None:
    """Builds the instance's function; an error message refuses the deployment."""
    f = _registered
    if f is None:
        return "the component registered no function: put @runnel.filter, @runnel.map or @runnel.scorer on one"
    cfg = Config(config)
    try:
        if f.init_fn is not None:
            f.init_fn(cfg)
        if f.kind == "scorer":
            obj = f.target(cfg, model)
            f.call = obj.score
        elif f.is_class:
            obj = f.target(cfg)
            f.call = getattr(obj, f.kind)
        else:
            f.call = f.target
    except Exception as e:  # noqa: BLE001 - any failure refuses the deployment
        return str(e) or type(e).__name__
    return None


def _not_ready():
    raise RuntimeError("runnel: a batch came before init")


def _filter(data: bytes, index: list[int]) -> tuple[bytes, list[tuple[int, str]]]:
    call = _registered.call if _registered is not None else None
    if call is None:
        _not_ready()
    mv = memoryview(data)
    keep = bytearray(len(index))
    failures = []
    # Any other exception goes on up: componentize-py writes its traceback
    # to stderr and traps, and the host puts that in the trap's message.
    i = 0
    for at in index:
        try:
            if call(Record(mv, at)):
                keep[i] = 1
        except RecordError as e:
            failures.append((i, str(e)))
        i += 1
    return bytes(keep), failures


def _outputs(data: bytes, index: list[int], kind: str):
    """Runs a map or a scorer: (counts, frames, frame index, failures)."""
    call = _registered.call if _registered is not None else None
    if call is None:
        _not_ready()
    mv = memoryview(data)
    counts = []
    out = bytearray()
    out_index = []
    failures = []
    scorer = kind == "score"
    i = 0
    for at in index:
        try:
            result = call(Record(mv, at))
        except RecordError as e:
            failures.append((i, str(e)))
            counts.append(0)
            i += 1
            continue
        if result is None:
            results = ()
        elif isinstance(result, Output):
            results = (result,)
        else:
            results = result
        n = 0
        for o in results:
            if not isinstance(o, Output):
                raise TypeError(
                    f"{kind} returned a {type(o).__name__}, not a runnel.Output "
                    "(build one with runnel.Output(value) or runnel.Output.json(obj))"
                )
            out_index.append(len(out))
            _frame(out, o.key, o.value, o.headers, o.timestamp_ms)
            n += 1
        if scorer and n != 1:
            raise TypeError(f"a scorer returns exactly one runnel.Output per record, not {n}")
        counts.append(n)
        i += 1
    return counts, bytes(out), out_index, failures
