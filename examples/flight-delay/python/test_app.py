"""Unit tests of the Python flight-delay scorer, run natively by CPython:

    cd examples/flight-delay/python && python3 -m unittest -v

They hold it to what the Rust scorer does: LightGBM's raw scores bit for bit
on the parity fixture (both models), the Rust scorer's outputs and messages
on the golden files in ../testdata, and the Rust evaluator's refusals of
models it cannot evaluate.
"""

import json
import math
import os
import random
import struct
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "guest-sdk", "python"))

import app  # noqa: E402
import runnel  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..")


def read(path, mode="r"):
    with open(os.path.join(EXAMPLE, path), mode) as f:
        return f.read()


def bits(x):
    return struct.pack("<d", x)


MODELS = {v: read(f"model/flight-delay-{v}.json", "rb") for v in ("v1", "v2")}
PARITY = [json.loads(line) for line in read("testdata/parity.jsonl").splitlines()]

DEMO = "1987,10,14,3,741,730,912,849,PS,1451,NA,91,79,NA,23,11,SAN,SFO,447,NA,NA,0,NA,0,NA,NA,NA,NA,NA,YES,YES"


def score_batch(values, keys=None):
    """Runs values through the registered scorer as the component does:
    (outputs as (key, value bytes) or None for each record, {index: error})."""
    data, index = bytearray(), []
    for i, v in enumerate(values):
        index.append(len(data))
        runnel._frame(data, None if keys is None else keys[i], v, (), None, 0, i)
    counts, out, out_index, failures = runnel._outputs(bytes(data), index, "score")
    frames = iter(runnel.Record(memoryview(out), at) for at in out_index)
    results = []
    for n in counts:
        if n:
            r = next(frames)
            results.append((None if r.key is None else bytes(r.key), bytes(r.value)))
        else:
            results.append(None)
    return results, dict(failures)


def same_json(a, b):
    """Equal JSON values, numbers as float64 bit for bit."""
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return isinstance(b, (int, float)) and not isinstance(b, bool) and bits(float(a)) == bits(float(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same_json(a[k], b[k]) for k in a)
    return a == b


class ParityTest(unittest.TestCase):
    """LightGBM's raw scores (testdata/parity.jsonl), bit for bit."""

    def test_the_scorer_gives_lightgbm_raw_scores_for_both_models(self):
        for version, model in MODELS.items():
            with self.subTest(model=version):
                self.assertIsNone(runnel._init([], model))
                logit = json.loads(model)["threshold_logit"]
                results, failures = score_batch([c["input"] for c in PARITY], [c["key"] for c in PARITY])
                self.assertEqual(failures, {})
                same = 0
                for case, (key, value) in zip(PARITY, results):
                    out = json.loads(value)
                    self.assertEqual(key, case["key"].encode())
                    self.assertEqual(list(out), ["prediction", "probability", "raw_score", "threshold", "model"])
                    raw = out["raw_score"]
                    same += bits(raw) == bits(case[f"raw_{version}"])
                    self.assertEqual(out["prediction"], "YES" if raw >= logit else "NO")
                    self.assertEqual(bits(out["probability"]), bits(1.0 / (1.0 + math.exp(-raw))))
                    self.assertEqual(out["model"], f"flight-delay-{version}")
                self.assertEqual(same, len(PARITY), f"{same} of {len(PARITY)} bit-identical")

    def test_the_mask_walk_gives_what_the_table_walk_gives(self):
        budget = app._MAX_TABLE_ENTRIES
        try:
            app._MAX_TABLE_ENTRIES = 0
            masks = app.FlightModel.from_json(MODELS["v2"])
        finally:
            app._MAX_TABLE_ENTRIES = budget
        tables = app.FlightModel.from_json(MODELS["v2"])
        self.assertIsNone(masks.booster._next)
        self.assertIsNotNone(tables.booster._next)
        for case in PARITY:
            flight = app.parse_flight(case["input"])
            self.assertEqual(bits(masks.predict(flight).raw_score), bits(case["raw_v2"]))
            self.assertEqual(bits(tables.predict(flight).raw_score), bits(case["raw_v2"]))

    def test_predict_is_the_booster_on_the_features(self):
        model = app.FlightModel.from_json(MODELS["v1"])
        for case in PARITY:
            flight = app.parse_flight(case["input"])
            self.assertEqual(
                bits(model.booster.raw_score(model.features(flight))), bits(model.predict(flight).raw_score)
            )


# LightGBM's decision rules transcribed plainly (include/LightGBM/tree.h), on
# the trees as parsed: what the flattened walk is held to.


def plain_leaf(booster, tree, row):
    if not tree.nodes:
        return 0
    at = 0
    while at >= 0:
        node = tree.nodes[at]
        value = row[node.feature]
        if node.decision & 1:  # categorical
            left = False
            # NaN goes right; C++ `static_cast<int>` truncates (Rust's `as i32` saturates).
            category = -1 if value != value else int(max(min(value, 2**31 - 1), -(2**31)))
            if category >= 0:
                word = category // 32
                if word < node.bits_len:
                    left = (booster.bitsets[node.bits_start + word] >> (category % 32)) & 1 == 1
        else:
            missing = (node.decision >> 2) & 3
            if value != value and missing != 2:
                value = 0.0
            if (missing == 1 and -app.ZERO_THRESHOLD <= value <= app.ZERO_THRESHOLD) or (
                missing == 2 and value != value
            ):
                left = node.decision & 2 != 0
            else:
                left = value <= node.threshold
        at = node.left if left else node.right
    return ~at


def plain_raw_score(booster, row):
    total = 0.0
    for tree in booster.trees:
        total += tree.leaves[plain_leaf(booster, tree, row)]
    return total


def probe(rng, around):
    """A value that probes the rules: NaN, zeros, values near zero and near
    the thresholds, fractions, negatives, infinities, large numbers."""
    pick = rng.randrange(100)
    r = rng.random()
    if pick < 10:
        return math.nan
    if pick < 15:
        return 0.0
    if pick < 18:
        return -0.0
    if pick < 23:
        return (r - 0.5) * 4e-35
    if pick < 27:
        return math.inf if r < 0.5 else -math.inf
    if pick < 30:
        return (r - 0.5) * 1e12
    if pick < 60:
        t = rng.choice(around)
        return rng.choice([t, math.nextafter(t, math.inf), math.nextafter(t, -math.inf)])
    return (r - 0.2) * 80.0


def text_model(lightgbm):
    artifact = json.loads(MODELS["v1"])
    artifact["lightgbm"] = lightgbm
    return json.dumps(artifact).encode()


# The Rust evaluator's hand-written test model (predictor/src/gbdt.rs): tree 0
# splits feature 0 (NaN missing, default right, then default left), feature 1
# (missing type zero) and feature 2 (none); tree 1 splits feature 3 on a
# two-word bitset and a one-word one.
RULES = """tree
version=v4
num_class=1
num_tree_per_iteration=1
max_feature_idx=3
objective=regression

Tree=0
num_leaves=5
num_cat=0
split_feature=0 1 2 0
threshold=0.5 -2 -0.25 7
decision_type=8 6 0 10
left_child=1 2 -1 -3
right_child=3 -2 -4 -5
leaf_value=1 2 4 8 16
shrinkage=1

Tree=1
num_leaves=4
num_cat=2
split_feature=3 1 3
threshold=0 1e-30 1
decision_type=1 4 9
left_child=1 -1 -3
right_child=2 -2 -4
leaf_value=0.125 0.25 0.5 0.75
cat_boundaries=0 2 3
cat_threshold=5 2147483649 4
shrinkage=1

Tree=2
num_leaves=3
num_cat=0
split_feature=2 2
threshold=0 1.5
decision_type=2 2
left_child=-1 -2
right_child=1 -3
leaf_value=0.001 0.002 0.003
shrinkage=1

end of trees
"""


class RulesTest(unittest.TestCase):
    """The flattened walk follows LightGBM's rules."""

    def assert_walks_agree(self, booster, around, rows, seed=1):
        rng = random.Random(seed)
        for _ in range(rows):
            row = [probe(rng, around) for _ in range(booster.num_features)]
            self.assertEqual(bits(booster.raw_score(row)), bits(plain_raw_score(booster, row)), row)

    def test_every_missing_value_rule(self):
        b = app.Booster(RULES)
        self.assertEqual((b.num_features, b.num_trees, b.sigmoid), (4, 3, None))
        around = [0.5, -2.0, -0.25, 7.0, 1e-30, 0.0, 1.5, 1.0, 31.0, 32.0, 33.0, 2.0]
        self.assert_walks_agree(b, around, 20_000)
        nan = math.nan
        # Worked by hand (the Rust tests' rows): NaN goes right at node 0
        # (missing type NaN, default right), left at node 3 (default left).
        self.assertEqual(b.raw_score([nan, 5.0, -1.0, 0.0]), 4.0 + 0.25 + 0.001)
        # Near zero goes to the default side only where the missing type is
        # zero; category 33 is in neither bitset.
        self.assertEqual(b.raw_score([0.0, 1e-36, 0.0, 33.0]), 8.0 + 0.75 + 0.001)
        # NaN is 0 where the missing type is zero or none.
        self.assertEqual(b.raw_score([0.0, nan, nan, 1.0]), 8.0 + 0.75 + 0.001)
        self.assertEqual(b.raw_score([9.0, 0.0, 2.0, 2.0]), 16.0 + 0.25 + 0.003)
        # Category 32 is bit 0 of the second word; -0.5 truncates to
        # category 0, -1 is negative and goes right.
        self.assertEqual(b.raw_score([0.0, 5.0, -1.0, 32.0]), 2.0 + 0.25 + 0.001)
        self.assertEqual(b.raw_score([0.0, 5.0, -1.0, -0.5]), 2.0 + 0.25 + 0.001)
        self.assertEqual(b.raw_score([0.0, 5.0, -1.0, -1.0]), 2.0 + 0.75 + 0.001)

    def test_the_committed_models(self):
        for version, model in MODELS.items():
            with self.subTest(model=version):
                b = app.FlightModel.from_json(model).booster
                around = [n.threshold for t in b.trees for n in t.nodes]
                self.assert_walks_agree(b, around, 2_000)

    def test_a_binary_model_and_its_probability(self):
        b = app.FlightModel.from_json(MODELS["v1"]).booster
        self.assertEqual((b.num_trees, b.sigmoid, b.probability(0.0)), (100, 1.0, 0.5))
        self.assertEqual(b.probability(-1000.0), 0.0)  # exp overflows: 1 / inf
        self.assertEqual(b.probability(1000.0), 1.0)


class FlightTest(unittest.TestCase):
    """Flights as CSV lines and JSON objects."""

    def test_the_original_demo_line_in_both_lengths(self):
        f = app.parse_flight(DEMO)
        self.assertEqual(f, (10.0, 3.0, 7.0, "PS", "SAN", "SFO", 447.0))
        self.assertEqual(app.parse_flight(",".join(DEMO.split(",")[:29])), f)
        self.assertEqual(app.parse_flight(DEMO.replace("1987", "1999", 1)), f)
        self.assertEqual(app.parse_flight(DEMO + "\r\n"), f)
        self.assertEqual(app.parse_flight(DEMO.replace(",SAN,", ", SAN\u3000,", 1)), f)

    def test_missing_values(self):
        na = app.parse_flight(DEMO.replace(",447,", ",NA,", 1).replace(",PS,", ",,", 1))
        self.assertTrue(math.isnan(na[6]))
        self.assertIsNone(na[3])
        self.assertTrue(math.isnan(app.parse_flight(DEMO.replace(",730,", ",NA,", 1))[2]))
        self.assertEqual(app.parse_flight(DEMO.replace(",730,", ",-30,", 1))[2], -1.0)  # floor
        self.assertEqual(app.parse_flight(DEMO.replace(",730,", ",+0730,", 1))[2], 7.0)

    def test_json_flights(self):
        f = app.parse_flight(
            '{"month":1,"day_of_week":2,"dep_hour":6,"carrier":"UA","origin":"EWR","dest":"IAH","distance":1400}'
        )
        self.assertEqual(f, (1.0, 2.0, 6.0, "UA", "EWR", "IAH", 1400.0))
        g = app.parse_flight(
            ' {"month":1,"day_of_week":2,"crs_dep_time":659,"carrier":null,"origin":"EWR",'
            '"dest":"IAH","distance":null,"year":2013,"extra":[{"x":[1]}]}'
        )
        self.assertEqual(g[2:4], (6.0, None))
        self.assertTrue(math.isnan(g[6]))
        # dep_hour wins over crs_dep_time, even when it is null.
        h = app.parse_flight(
            '{"month":1,"day_of_week":2,"dep_hour":null,"crs_dep_time":659,"carrier":"UA",'
            '"origin":"EWR","dest":"IAH","distance":1}'
        )
        self.assertTrue(math.isnan(h[2]))

    def assert_error(self, text, message):
        with self.assertRaises(runnel.RecordError) as e:
            app.parse_flight(text)
        self.assertEqual(str(e.exception), message)

    def test_errors_name_the_field(self):
        self.assert_error(
            DEMO.replace(",730,", ",7x0,", 1), 'field 6 (CRSDepTime) is "7x0", not a whole number or NA'
        )
        self.assert_error(DEMO.replace(",10,", ",Oct,", 1), 'field 2 (Month) is "Oct", not a whole number or NA')
        self.assert_error(DEMO.replace(",3,", ",1_0,", 1), 'field 4 (DayOfWeek) is "1_0", not a whole number or NA')
        self.assert_error(
            DEMO.replace(",447,", ",4.5,", 1), 'field 19 (Distance) is "4.5", not a whole number or NA'
        )
        self.assert_error(
            DEMO.replace(",447,", ",99999999999999999999,", 1),
            'field 19 (Distance) is "99999999999999999999", not a whole number or NA',
        )
        self.assert_error(
            DEMO.replace(",447,", ',"x\ty\u00a0",', 1),
            'field 19 (Distance) is "\\"x\\ty\\u{a0}\\"", not a whole number or NA',
        )
        self.assert_error("1,2,3", "expected 29 or 31 comma-separated fields, found 3")
        self.assert_error("", "expected 29 or 31 comma-separated fields, found 1")
        self.assert_error(DEMO + ",x", "expected 29 or 31 comma-separated fields, found 32")
        self.assert_error("Year,Month", "this is the CSV header line, not a flight")
        self.assert_error('{"month":1}', 'field "day_of_week" is missing (use null for unknown)')
        self.assert_error(
            '{"month":1,"day_of_week":2}', 'field "dep_hour" (or "crs_dep_time") is missing (use null for unknown)'
        )
        self.assert_error(
            '{"month":1,"day_of_week":2,"dep_hour":3,"carrier":null,"origin":null,"dest":null}',
            'field "distance" is missing (use null for unknown)',
        )

    def test_json_type_errors_are_serdes_words(self):
        # serde_json also says where: " at line 1 column 12".
        prefix = "the value is not a flight JSON object: "
        self.assert_error('{"month":"x"}', prefix + 'invalid type: string "x", expected f64')
        self.assert_error('{"month":true}', prefix + "invalid type: boolean `true`, expected f64")
        self.assert_error('{"month":[1]}', prefix + "invalid type: sequence, expected f64")
        self.assert_error('{"month":{}}', prefix + "invalid type: map, expected f64")
        self.assert_error('{"carrier":5}', prefix + "invalid type: integer `5`, expected a string")
        self.assert_error('{"carrier":1e-7}', prefix + "invalid type: floating point `1e-7`, expected a string")
        self.assert_error('{"month":1,"month":2}', prefix + "duplicate field `month`")
        self.assert_error('{"month":1e400}', prefix + "number out of range")
        with self.assertRaisesRegex(runnel.RecordError, "^the value is not a flight JSON object: "):
            app.parse_flight('{"month":NaN}')
        with self.assertRaisesRegex(runnel.RecordError, "^the value is not a flight JSON object: "):
            app.parse_flight('{"month":1} x')
        deep = '{"a":' + "[" * 100_000 + "]" * 100_000 + "}"
        self.assert_error(deep, prefix + "recursion limit exceeded")

    def test_records_without_a_flight(self):
        self.assertIsNone(runnel._init([], MODELS["v1"]))
        results, failures = score_batch([None, b"\xff", DEMO.encode()])
        self.assertEqual(results[:2], [None, None])
        self.assertEqual(sorted(failures), [0, 1])
        self.assertIn("no value", failures[0])
        self.assertIn("not UTF-8", failures[1])


class OutputTest(unittest.TestCase):
    def test_the_output_keeps_the_key_and_has_the_rust_fields(self):
        self.assertIsNone(runnel._init([], MODELS["v1"]))
        results, failures = score_batch([DEMO.encode(), DEMO.encode()], [b"k1", None])
        self.assertEqual(failures, {})
        (k1, v1), (k2, v2) = results
        self.assertEqual((k1, k2), (b"k1", None))
        self.assertEqual(v1, v2)
        out = json.loads(v1)
        self.assertEqual(
            out,
            {
                "prediction": "NO",
                "probability": out["probability"],
                "raw_score": out["raw_score"],
                "threshold": 0.221,
                "model": "flight-delay-v1",
            },
        )
        model = app.FlightModel.from_json(MODELS["v1"])
        self.assertEqual(v1, model.scored_json(model.predict(app.parse_flight(DEMO))))
        self.assertEqual(out, model.scored(model.predict(app.parse_flight(DEMO))))

    def test_a_number_that_is_not_finite_is_null_as_serde_writes_it(self):
        model = app.FlightModel.from_json(MODELS["v1"])
        p = app.Prediction(math.nan, math.inf, False)
        self.assertEqual(
            json.loads(model.scored_json(p)),
            {"prediction": "NO", "probability": None, "raw_score": None, "threshold": 0.221, "model": "flight-delay-v1"},
        )
        self.assertEqual(json.loads(model.scored_json(p)), {**model.scored(p), "probability": None, "raw_score": None})


class GoldenTest(unittest.TestCase):
    """The Rust scorer's outputs and messages on ../testdata/input.csv
    (expected.jsonl and expected.stderr, made by `runnel run --format lines
    --model ../model/flight-delay-v1.json`)."""

    def test_the_golden_files(self):
        self.assertIsNone(runnel._init([], MODELS["v1"]))
        lines = read("testdata/input.csv").split("\n")[:-1]
        numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]  # runnel run skips blank lines
        results, failures = score_batch([line.encode() for _, line in numbered])
        outputs = [json.loads(line) for line in read("testdata/expected.jsonl").splitlines()]
        *errors, summary = read("testdata/expected.stderr").splitlines()
        got_outputs = [(n, json.loads(r[1])) for (n, _), r in zip(numbered, results) if r is not None]
        self.assertEqual([n for n, _ in got_outputs], [o["line"] for o in outputs])
        for (n, got), expected in zip(got_outputs, outputs):
            self.assertTrue(same_json(got, json.loads(expected["value"])), f"line {n}: {got} != {expected}")
        got_errors = [f"line {numbered[i][0]}: {message}" for i, message in sorted(failures.items())]
        self.assertEqual(got_errors, errors)
        self.assertEqual(
            summary,
            f"{len(numbered)} records: {len(got_outputs)} outputs, 0 dropped, {len(failures)} failed (0 traps, 1 batches)",
        )


def edit_tree0(edit):
    """Model v1 with its first tree's lines edited: edit(fields) changes a
    dict of the tree's `key=value` lines (values split on spaces)."""
    artifact = json.loads(MODELS["v1"])
    head, rest = artifact["lightgbm"].split("\nTree=0\n", 1)
    tree, tail = rest.split("\n\n", 1)
    pairs = [line.split("=", 1) for line in tree.split("\n")]
    fields = {k: v.split(" ") for k, v in pairs}
    edit(fields)
    tree = "\n".join(f"{k}={' '.join(fields[k])}" for k, _ in pairs)
    artifact["lightgbm"] = f"{head}\nTree=0\n{tree}\n\n{tail}"
    return json.dumps(artifact).encode()


def with_fields(**changes):
    artifact = json.loads(MODELS["v1"])
    artifact.update(changes)
    return json.dumps({k: v for k, v in artifact.items() if v is not None}).encode()


def replaced(old, new):
    artifact = json.loads(MODELS["v1"])
    assert old in artifact["lightgbm"]
    artifact["lightgbm"] = artifact["lightgbm"].replace(old, new, 1)
    return json.dumps(artifact).encode()


def first_categorical(fields):
    return fields["decision_type"].index("9")


class ModelTest(unittest.TestCase):
    """Bad model artifacts are refused with the Rust scorer's messages (those
    of serde_json's own, without its position)."""

    def assert_refused(self, model, message):
        with self.assertRaises(app.ModelError) as e:
            app.FlightModel.from_json(model)
        self.assertEqual(str(e.exception), message)
        self.assertEqual(runnel._init([], model), message)  # the deployment is refused with it

    def test_the_artifact(self):
        artifact = "the model is not a runnel-lightgbm/1 JSON artifact: "
        self.assert_refused(
            with_fields(format="runnel-lightgbm/2"),
            'the model\'s format is "runnel-lightgbm/2"; this scorer reads "runnel-lightgbm/1"',
        )
        self.assert_refused(
            with_fields(features=["month", "dep_hour"]),
            'the model\'s features are ["month", "dep_hour"]; this scorer computes ["month", "day_of_week", '
            '"dep_hour", "carrier", "origin", "dest", "distance"]',
        )
        self.assert_refused(
            with_fields(threshold=1.5), "the threshold 1.5 is not a probability strictly between 0 and 1"
        )
        self.assert_refused(
            with_fields(threshold=-1e-7), "the threshold -0.0000001 is not a probability strictly between 0 and 1"
        )
        self.assert_refused(with_fields(threshold_logit=None), artifact + "missing field `threshold_logit`")
        self.assert_refused(with_fields(threshold="0.3"), artifact + 'invalid type: string "0.3", expected f64')
        self.assert_refused(
            with_fields(categorical={"carrier": [], "origin": []}), artifact + "missing field `dest`"
        )
        self.assert_refused(with_fields(features=[1]), artifact + "invalid type: integer `1`, expected a string")
        self.assert_refused(
            b'{"format": "x", "format": "y"}', artifact + "duplicate field `format`"
        )
        self.assert_refused(b'["x"]', artifact + "invalid length 1, expected struct Artifact with 7 elements")
        self.assert_refused(b"[1]", artifact + "invalid type: integer `1`, expected a string")
        self.assert_refused(b"3", artifact + "invalid type: integer `3`, expected struct Artifact")
        for bad in (b"", b"hello", b"\xef\xbb\xbf{}", b"\xff"):
            with self.assertRaisesRegex(app.ModelError, "^" + artifact):
                app.FlightModel.from_json(bad)
        self.assertEqual(runnel._init([], None)[: len(artifact)], artifact)

    def test_an_artifact_in_serdes_array_form_is_read(self):
        a = json.loads(MODELS["v1"])
        fields = ("format", "name", "features", "categorical", "threshold", "threshold_logit", "lightgbm")
        model = app.FlightModel.from_json(json.dumps([a[k] for k in fields]).encode())
        self.assertEqual((model.name, model.booster.num_trees), ("flight-delay-v1", 100))

    def test_the_lightgbm_model(self):
        self.assert_refused(with_fields(lightgbm=""), "not a LightGBM text model: it is empty")
        self.assert_refused(
            with_fields(lightgbm='{"json": 1}'),
            'not a LightGBM text model: the first line is "{\\"json\\": 1}", not "tree"',
        )
        self.assert_refused(
            replaced("num_class=1", "num_class=3"),
            "num_class=3: only single-output models (binary, regression) are supported",
        )
        self.assert_refused(
            replaced("feature_names=", "average_output\nfeature_names="),
            "random-forest models (average_output) are not supported",
        )
        self.assert_refused(replaced("max_feature_idx=6", "max_feature_idx=7"), "the LightGBM model has 8 features, not 7")
        self.assert_refused(replaced("max_feature_idx=6", "max_feature_idx=-1"), 'max_feature_idx="-1" is not a number')
        # (The Rust scorer allocates a coding per feature first, and runs out of memory.)
        self.assert_refused(
            replaced("max_feature_idx=6", "max_feature_idx=99999999"), "the LightGBM model has 100000000 features, not 7"
        )
        self.assert_refused(replaced("max_feature_idx=6\n", ""), "the model has no max_feature_idx line")
        self.assert_refused(
            replaced("objective=binary sigmoid:1", "objective=binary sigmoid:x"),
            'objective "binary sigmoid:x": the sigmoid "x" is not a number',
        )
        lightgbm = json.loads(MODELS["v1"])["lightgbm"]
        self.assert_refused(with_fields(lightgbm=lightgbm.split("\nTree=")[0]), "the model has no trees")
        regression = app.FlightModel.from_json(replaced("objective=binary sigmoid:1", "objective=regression"))
        p = regression.predict(app.parse_flight(DEMO))
        self.assertEqual(p.probability, p.raw_score)  # no sigmoid: the raw score

    def test_the_trees(self):
        def tree(edit, message):
            self.assert_refused(edit_tree0(edit), message)

        tree(lambda f: f.update(is_linear=["1"]), "tree 0: linear trees (is_linear=1) are not supported")
        tree(lambda f: f.update(num_leaves=["30"]), "tree 0: num_leaves=30 but 31 leaf values")
        tree(lambda f: f.update(num_leaves=["x"]), 'tree 0: num_leaves="x" is not a number')
        tree(lambda f: f["threshold"].__setitem__(0, "x"), 'tree 0: threshold: "x" is not a number')
        tree(lambda f: f["threshold"].__setitem__(0, "1_0"), 'tree 0: threshold: "1_0" is not a number')
        tree(lambda f: f["decision_type"].__setitem__(0, "256"), 'tree 0: decision_type: "256" is not a number')
        tree(lambda f: f["split_feature"].pop(), "tree 0: num_leaves=31 needs 30 split_feature values, found 29")
        # Rust's `num_leaves - 1` wraps for 0, in the release build.
        tree(
            lambda f: f.update(num_leaves=["0"], leaf_value=[""]),
            "tree 0: num_leaves=0 needs 4294967295 split_feature values, found 30",
        )
        tree(lambda f: f.update(cat_boundaries=["0", "1"]), "tree 0: num_cat=10 needs 11 cat_boundaries, found 2")
        tree(lambda f: f["right_child"].__setitem__(0, "-40"), "tree 0: node 0 points at a child that does not exist")
        tree(lambda f: f["split_feature"].__setitem__(0, "9"), "tree 0: node 0 splits on feature 9 of 7")
        tree(
            lambda f: f["threshold"].__setitem__(first_categorical(f), "99"),
            "tree 0: categorical node 1 names bitset 99, which does not exist",
        )
        # What the flattening refuses (predictor/src/forest.rs).
        tree(
            lambda f: f["left_child"].__setitem__(0, "0"),
            "tree 0: node 0 is reached twice: the splits do not form a tree",
        )
        tree(
            lambda f: f["decision_type"].__setitem__(f["split_feature"].index("3"), "2"),
            "tree 0: node 10: feature 3 is split both as a number and as a category",
        )
        tree(lambda f: f["threshold"].__setitem__(0, "nan"), "tree 0: node 0: feature 2 is split at a NaN threshold")
        tree(
            lambda f: (f["threshold"].__setitem__(0, "1e-36"), f["decision_type"].__setitem__(0, "6")),
            "feature 2 treats zero as missing and is also split within 1.0000000180025095e-35 of zero",
        )

    def test_too_many_codes_for_the_masks(self):
        # 40 categorical splits on one bitset of 2^21 words: each split's
        # mask covers 2^26 categories, 1 Mi words, 40 Mi words in all.
        words, splits = 1 << 21, 40
        lefts = " ".join(str(~i) for i in range(splits))
        rights = " ".join(str(i) if i < splits else str(~splits) for i in range(1, splits + 1))
        tree = (
            f"num_leaves={splits + 1}\nnum_cat=1\nsplit_feature={' '.join(['1'] * splits)}\n"
            f"threshold={' '.join(['0'] * splits)}\ndecision_type={' '.join(['1'] * splits)}\n"
            f"left_child={lefts}\nright_child={rights}\nleaf_value={' '.join(['0.5'] * (splits + 1))}\n"
            f"cat_boundaries=0 {words}\ncat_threshold={' '.join(['1'] * words)}\nshrinkage=1\n"
        )
        text = (
            "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nmax_feature_idx=1\n"
            f"objective=regression\n\nTree=0\n{tree}\nend of trees\n"
        )
        with self.assertRaises(app.ModelError) as e:
            app.Booster(text)
        self.assertEqual(
            str(e.exception),
            "the model's splits need 320 MiB of masks, more than the 256 MiB this evaluator allows: "
            "a feature is split at too many thresholds or categories",
        )


if __name__ == "__main__":
    unittest.main()
