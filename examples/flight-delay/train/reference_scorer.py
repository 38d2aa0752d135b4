#!/usr/bin/env python3
"""A plain-Python reading of the LightGBM text model, as the Rust scorer reads
it: what each split does, NaN included. It is checked against LightGBM's own
raw scores on testdata/parity.jsonl (bit for bit):

    reference_scorer.py [../testdata/parity.jsonl]

What LightGBM 4.7.0 does (x86-64), and so what this does:
- raw score = sum of the trees' outputs in file order, in float64, from 0.0
  (no init_score: boost_from_average is folded into the first tree's leaves);
- numerical split (decision_type bit 0 clear): missing_type = (decision_type >> 2) & 3;
  a NaN becomes 0.0 unless missing_type is 2 (NaN); missing_type 1 (Zero) sends
  |x| <= 1e-35 and missing_type 2 sends NaN to the default side (bit 1: left);
  otherwise left iff x <= threshold;
- categorical split (bit 0 set): NaN or a negative value goes right; else
  left iff category int(x) is in the bitset cat_threshold[cat_boundaries[t] ..
  cat_boundaries[t+1]] where t = int(threshold) (bit c%32 of word c//32;
  a category past the bitset goes right).
"""

import json
import math
import os
import struct
import sys

from flightdata import encode, load_model, raw_features

K_ZERO_THRESHOLD = 1e-35


def parse_trees(text):
    trees = []
    for block in text.split("\nTree=")[1:]:
        block = block.split("\nend of trees")[0]
        kv = {}
        for line in block.split("\n")[1:]:
            if "=" in line:
                k, v = line.split("=", 1)
                kv[k] = v
        if kv.get("is_linear", "0") != "0":
            raise ValueError("linear trees are not supported")
        t = {"num_leaves": int(kv["num_leaves"]), "leaf_value": [float(v) for v in kv["leaf_value"].split()]}
        if t["num_leaves"] > 1:
            t["split_feature"] = [int(v) for v in kv["split_feature"].split()]
            t["threshold"] = [float(v) for v in kv["threshold"].split()]
            t["decision_type"] = [int(v) for v in kv["decision_type"].split()]
            t["left"] = [int(v) for v in kv["left_child"].split()]
            t["right"] = [int(v) for v in kv["right_child"].split()]
            if int(kv.get("num_cat", "0")) > 0:
                t["cat_boundaries"] = [int(v) for v in kv["cat_boundaries"].split()]
                t["cat_threshold"] = [int(v) for v in kv["cat_threshold"].split()]
        trees.append(t)
    return trees


def goes_left(t, node, x):
    dt = t["decision_type"][node]
    if dt & 1:  # categorical
        if math.isnan(x) or x < 0:
            return False
        c = int(x)
        i = int(t["threshold"][node])
        lo, hi = t["cat_boundaries"][i], t["cat_boundaries"][i + 1]
        word = c // 32
        if word >= hi - lo:
            return False
        return (t["cat_threshold"][lo + word] >> (c % 32)) & 1 == 1
    missing = (dt >> 2) & 3
    if math.isnan(x) and missing != 2:
        x = 0.0
    if (missing == 1 and -K_ZERO_THRESHOLD <= x <= K_ZERO_THRESHOLD) or (missing == 2 and math.isnan(x)):
        return bool(dt & 2)
    return x <= t["threshold"][node]


def tree_output(t, row):
    if t["num_leaves"] == 1:
        return t["leaf_value"][0]
    node = 0
    while node >= 0:
        node = t["left"][node] if goes_left(t, node, row[t["split_feature"][node]]) else t["right"][node]
    return t["leaf_value"][~node]


def raw_score(trees, row):
    s = 0.0
    for t in trees:
        s += tree_output(t, row)
    return s


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "testdata", "parity.jsonl")
    with open(path, encoding="utf-8") as f:
        cases = [json.loads(line) for line in f]
    bad = 0
    for short in ["v1", "v2"]:
        model, _ = load_model(os.path.join(here, "..", "model", f"flight-delay-{short}.json"))
        trees = parse_trees(model["lightgbm"])
        x = encode([raw_features(c["input"]) for c in cases], model["categorical"])
        same = 0
        for c, row in zip(cases, x):
            r = raw_score(trees, list(row))
            if struct.pack("<d", r) == struct.pack("<d", c[f"raw_{short}"]):
                same += 1
            else:
                bad += 1
                print(f"{c['key']} {short}: {r!r} != {c['raw_' + short]!r}")
        print(f"{model['name']}: {len(trees)} trees, {same} of {len(cases)} bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
