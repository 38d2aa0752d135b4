#!/usr/bin/env python3
"""Checks the scorer against Python LightGBM on the whole held-out set.

    check_parity.py OUTPUTS --model ../model/flight-delay-v1.json \
        [--model ../model/flight-delay-v2.json] [--heldout ../data/heldout.csv.gz]

OUTPUTS holds the scorer's outputs, one JSON object a line (read by
read_outputs below: adapt it there if the shape changes). The key of an
output is the 0-based line number of its flight in heldout.csv.gz. Each output
is checked against the model it names (its "model" field), or against the
only --model given when it names none.

For each output, Python's raw score (Booster.predict(raw_score=True), the
line parsed as flightdata.py parses it) must be bit-identical to the
scorer's "raw_score" (float64), and the scorer's "prediction" must be
Python's decision: "YES" iff raw_score >= threshold_logit.

Prints: outputs compared, bit-identical, max abs diff, decisions matching;
exits 1 on any mismatch, on an output whose key is not a held-out line or
whose model is not given, or (unless --allow-missing) when a held-out flight
has no output.
"""

import argparse
import json
import math
import os
import struct
import sys

from flightdata import encode, load_model, raw_features, read_heldout

HERE = os.path.dirname(os.path.abspath(__file__))


def read_outputs(path):
    """Yields (key, model name or None, raw_score, prediction) for each output line.

    Expected line: {"key":"17","value":{"prediction":"YES","probability":0.41,
    "raw_score":-0.36,"threshold":0.3,"model":"flight-delay-v1"}}; "value" may
    also be the JSON text of that object. `runnel run --format lines` writes
    {"line":18,"value":"..."} instead: the 1-based line number of the input,
    so the key is line - 1.
    """
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            value = rec["value"]
            if isinstance(value, str):
                value = json.loads(value)
            key = str(rec["key"]) if "key" in rec else str(int(rec["line"]) - 1)
            yield key, value.get("model"), float(value["raw_score"]), value["prediction"]


def bits(x):
    return struct.pack("<d", x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outputs", help="the scorer's outputs, JSON lines")
    ap.add_argument("--model", action="append", required=True, help="a model JSON file (repeatable)")
    ap.add_argument("--heldout", default=os.path.join(HERE, "..", "data", "heldout.csv.gz"))
    ap.add_argument("--allow-missing", action="store_true",
                    help="do not fail when some held-out flights have no output")
    args = ap.parse_args(argv)

    lines = read_heldout(args.heldout)
    models = {}
    for path in args.model:
        model, booster = load_model(path)
        x = encode([raw_features(line) for line in lines], model["categorical"])
        raw = booster.predict(x, raw_score=True, num_threads=1)
        models[model["name"]] = (model, raw)

    stats = {name: {"compared": 0, "identical": 0, "max_abs_diff": 0.0, "decisions": 0}
             for name in models}
    problems = []  # the first few, to show
    errors = 0  # outputs that could not be checked at all
    seen = set()

    def problem(text):
        if len(problems) < 20:
            problems.append(text)

    for key, name, raw_score, prediction in read_outputs(args.outputs):
        if name is None:
            if len(models) != 1:
                problem(f"key {key}: the output names no model, and {len(models)} were given")
                errors += 1
                continue
            name = next(iter(models))
        if name not in models:
            problem(f"key {key}: model {name!r} was not given")
            errors += 1
            continue
        if not key.isdigit() or int(key) >= len(lines):
            problem(f"key {key}: not a line of {args.heldout}")
            errors += 1
            continue
        i = int(key)
        seen.add(i)
        model, raw = models[name]
        py = float(raw[i])
        s = stats[name]
        s["compared"] += 1
        if bits(py) == bits(raw_score):
            s["identical"] += 1
        else:
            problem(f"key {key} ({name}): raw_score {raw_score!r}, Python {py!r}")
        diff = abs(py - raw_score) if not (math.isnan(py) or math.isnan(raw_score)) else math.inf
        s["max_abs_diff"] = max(s["max_abs_diff"], diff)
        expected = "YES" if py >= model["threshold_logit"] else "NO"
        if prediction == expected:
            s["decisions"] += 1
        else:
            problem(f"key {key} ({name}): prediction {prediction!r}, Python {expected!r}")

    failed = errors > 0
    for name, s in stats.items():
        print(f"{name}: compared {s['compared']}, bit-identical {s['identical']}, "
              f"max abs diff {s['max_abs_diff']!r}, decisions matching {s['decisions']}")
        failed |= s["identical"] != s["compared"] or s["decisions"] != s["compared"]
    missing = len(lines) - len(seen)
    print(f"held-out flights: {len(lines)}, with an output: {len(seen)}, without: {missing}")
    if errors:
        print(f"outputs that could not be checked: {errors}")
    if missing and not args.allow_missing:
        failed = True
    if sum(s["compared"] for s in stats.values()) == 0:
        print("no output was compared")
        failed = True
    for p in problems:
        print("  " + p)
    print("FAIL" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
