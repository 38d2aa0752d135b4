"""The threshold filter in Python, the twin of ../src/lib.rs: keep the
records whose JSON value has a numeric field at or above a threshold (and,
optionally, below a ceiling). The rule is parsed once, in ``__init__``, and
a bad config refuses the deployment with a message naming the key.

Config:

============== ================================================================ =========
key            meaning                                                          default
============== ================================================================ =========
``field``      the field to test; ``a.b`` reaches into nested objects           required
``min``        keep records whose field is at least this                        none
``max``        keep records whose field is below this                           none
``on-missing`` ``drop`` or ``error``: what to do when the field is absent,      ``drop``
               null or not a number
============== ================================================================ =========

::

    runnel build && runnel run target/python.wasm --config field=dep_delay --config min=15 --input flights.jsonl
"""

import runnel


@runnel.filter
class Threshold:
    def __init__(self, config: runnel.Config):
        self.path = config.require("field").split(".")
        self.min = config.float("min")
        self.max = config.float("max")
        if self.min is None and self.max is None:
            raise runnel.ConfigError("set `min`, `max` or both (for instance --config min=15)")
        on_missing = config.get("on-missing", "drop")
        if on_missing not in ("drop", "error"):
            raise runnel.ConfigError(
                f"config `on-missing` = {on_missing!r} is not valid: use `drop` or `error`"
            )
        self.error_on_missing = on_missing == "error"

    def filter(self, record: runnel.Record) -> bool:
        value = record.value_json()
        for key in self.path:
            value = value.get(key) if isinstance(value, dict) else None
        # A JSON number, as f64 (as serde_json's as_f64): not a bool, not a string.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if self.error_on_missing:
                raise runnel.RecordError(f"field `{'.'.join(self.path)}` is missing or not a number")
            return False
        x = float(value)
        return (self.min is None or x >= self.min) and (self.max is None or x < self.max)
