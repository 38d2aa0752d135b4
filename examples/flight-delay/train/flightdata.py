"""What train.py and check_parity.py share: the feature order, the airline
on-time CSV format, and how one record (a CSV line or a JSON object) becomes
one row of the float64 matrix the model scores.

This is the reference for the Rust scorer: it reads the same fields the same
way.

- Features, in this order: month, day_of_week, dep_hour, carrier, origin,
  dest, distance.
- From a CSV line (29 or 31 fields, split on ",", each field trimmed, "NA" or
  "" is missing): Month, DayOfWeek (the line's own field, 1 = Monday ...
  7 = Sunday; not recomputed), dep_hour = floor(CRSDepTime / 100), UniqueCarrier,
  Origin, Dest, Distance.
- From a JSON object: the keys of the same names as the features (null is
  missing), or crs_dep_time (hhmm) in place of dep_hour.
- A categorical value becomes its index in the model's vocabulary (a sorted
  list of the strings seen in training) as a float; a string not in the
  vocabulary, or a missing one, becomes NaN. A missing number is NaN too.
"""

import gzip
import io
import json
import math

import numpy as np

FEATURES = ["month", "day_of_week", "dep_hour", "carrier", "origin", "dest", "distance"]
CATEGORICAL = ["carrier", "origin", "dest"]
CATEGORICAL_INDEX = [FEATURES.index(c) for c in CATEGORICAL]  # [3, 4, 5]

COLUMNS = [
    "Year", "Month", "DayofMonth", "DayOfWeek", "DepTime", "CRSDepTime", "ArrTime",
    "CRSArrTime", "UniqueCarrier", "FlightNum", "TailNum", "ActualElapsedTime",
    "CRSElapsedTime", "AirTime", "ArrDelay", "DepDelay", "Origin", "Dest", "Distance",
    "TaxiIn", "TaxiOut", "Cancelled", "CancellationCode", "Diverted", "CarrierDelay",
    "WeatherDelay", "NASDelay", "SecurityDelay", "LateAircraftDelay", "IsArrDelayed",
    "IsDepDelayed",
]
COL = {name: i for i, name in enumerate(COLUMNS)}


def _missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def _int_field(v):
    """A number as the CSV writes it: an integer, or NA."""
    if _missing(v):
        return "NA"
    if isinstance(v, float):
        assert v == int(v), v
    return str(int(v))


def _text_field(v):
    return "NA" if _missing(v) else str(v)


def airline_line(*, year, month, day, day_of_week, dep_time, sched_dep_time, arr_time,
                 sched_arr_time, carrier, flight, tailnum, air_time, arr_delay, dep_delay,
                 origin, dest, distance):
    """One flight as a 31-field line of the US airline on-time format."""
    def yes_no(delay):
        return "NA" if _missing(delay) else ("YES" if delay > 0 else "NO")

    fields = [
        _int_field(year), _int_field(month), _int_field(day), _int_field(day_of_week),
        _int_field(dep_time), _int_field(sched_dep_time), _int_field(arr_time),
        _int_field(sched_arr_time), _text_field(carrier), _int_field(flight),
        _text_field(tailnum), "NA", "NA", _int_field(air_time), _int_field(arr_delay),
        _int_field(dep_delay), _text_field(origin), _text_field(dest), _int_field(distance),
        "NA", "NA", "0", "NA", "0", "NA", "NA", "NA", "NA", "NA",
        yes_no(arr_delay), yes_no(dep_delay),
    ]
    assert len(fields) == 31
    return ",".join(fields)


def _csv_value(fields, name):
    v = fields[COL[name]].strip()
    return None if v in ("NA", "") else v


def _csv_int(fields, name):
    v = _csv_value(fields, name)
    return None if v is None else int(v)


def raw_features_from_csv(line):
    """The 7 feature values (numbers, strings or None) of one CSV line."""
    fields = line.rstrip("\r\n").split(",")
    if len(fields) not in (29, 31):
        raise ValueError(f"expected 29 or 31 fields, found {len(fields)}")
    crs_dep = _csv_int(fields, "CRSDepTime")
    return {
        "month": _csv_int(fields, "Month"),
        "day_of_week": _csv_int(fields, "DayOfWeek"),
        "dep_hour": None if crs_dep is None else math.floor(crs_dep / 100),
        "carrier": _csv_value(fields, "UniqueCarrier"),
        "origin": _csv_value(fields, "Origin"),
        "dest": _csv_value(fields, "Dest"),
        "distance": _csv_int(fields, "Distance"),
    }


def raw_features_from_json(text):
    """A JSON object with the features' names as keys (null: missing); instead of
    dep_hour it may give crs_dep_time (hhmm), read as floor(crs_dep_time / 100)."""
    obj = json.loads(text)
    row = {name: obj.get(name) for name in FEATURES}
    if "dep_hour" not in obj and obj.get("crs_dep_time") is not None:
        row["dep_hour"] = math.floor(obj["crs_dep_time"] / 100)
    return row


def raw_features(record):
    """A record value as the scorer receives it: a JSON object or a CSV line."""
    return raw_features_from_json(record) if record.lstrip().startswith("{") else raw_features_from_csv(record)


def encode(rows, vocab):
    """Feature dicts -> float64 matrix; vocab maps each categorical to its sorted list."""
    index = {c: {s: float(i) for i, s in enumerate(vocab[c])} for c in CATEGORICAL}
    m = np.empty((len(rows), len(FEATURES)), dtype=np.float64)
    for r, row in enumerate(rows):
        for j, name in enumerate(FEATURES):
            v = row[name]
            if name in index:
                m[r, j] = index[name].get(v, math.nan) if isinstance(v, str) else math.nan
            else:
                m[r, j] = math.nan if v is None else float(v)
    return m


def read_heldout(path):
    """The lines of heldout.csv.gz; the key of a line is its 0-based number."""
    with gzip.open(path, "rt", encoding="ascii", newline="\n") as f:
        return [line.rstrip("\n") for line in f]


def write_gzip_lines(path, lines):
    """Plain text lines, gzip level 9, mtime 0 and no file name: the same bytes each run."""
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
        gz.write("".join(line + "\n" for line in lines).encode("ascii"))
    with open(path, "wb") as f:
        f.write(raw.getvalue())


def load_model(path):
    """A runnel-lightgbm/1 model file -> (its JSON object, a lightgbm.Booster)."""
    import lightgbm as lgb

    with open(path, encoding="utf-8") as f:
        model = json.load(f)
    if model.get("format") != "runnel-lightgbm/1":
        raise ValueError(f"{path}: format is {model.get('format')!r}, not runnel-lightgbm/1")
    if model["features"] != FEATURES:
        raise ValueError(f"{path}: features {model['features']} are not {FEATURES}")
    return model, lgb.Booster(model_str=model["lightgbm"])
