"""Unit tests of the Python SDK, run natively by CPython:

    cd guest-sdk/python && python3 -m unittest -v
"""

import importlib
import os
import struct
import unittest

import runnel

HERE = os.path.dirname(os.path.abspath(__file__))


def fresh():
    """The SDK with nothing registered (each test registers its own function)."""
    return importlib.reload(runnel)


def batch(*records):
    """Frames records as the host does: (data, index)."""
    data, index = bytearray(), []
    for r in records:
        index.append(len(data))
        runnel._frame(data, r.get("key"), r.get("value"), r.get("headers", ()), r.get("ts"), 3, 7 + len(index))
    return bytes(data), index


def frames(data, index):
    """Decodes output frames back into Records."""
    mv = memoryview(data)
    return [runnel.Record(mv, at) for at in index]


class RecordTest(unittest.TestCase):
    def test_fields_are_views_decoded_when_read(self):
        r = runnel.Record.of(
            value=b'{"a": 1}', key="k", headers=[("h", b"v"), ("n", None)], partition=2, offset=9, timestamp_ms=5
        )
        self.assertIsInstance(r.value, memoryview)
        self.assertEqual(bytes(r.key), b"k")
        self.assertEqual(r.value_json(), {"a": 1})
        self.assertEqual(r.value_str(), '{"a": 1}')
        self.assertEqual((r.partition, r.offset, r.timestamp_ms), (2, 9, 5))
        self.assertEqual([(n, None if v is None else bytes(v)) for n, v in r.headers], [("h", b"v"), ("n", None)])
        self.assertEqual(bytes(r.header("h")), b"v")
        self.assertIsNone(r.header("missing"))

    def test_absent_key_value_and_time(self):
        r = runnel.Record.of()
        self.assertIsNone(r.key)
        self.assertIsNone(r.value)
        self.assertIsNone(r.timestamp_ms)
        self.assertEqual(r.headers, [])
        with self.assertRaisesRegex(runnel.RecordError, "no value"):
            r.value_str()

    def test_an_empty_value_is_not_an_absent_one(self):
        r = runnel.Record.of(value=b"", key=b"")
        self.assertEqual(bytes(r.value), b"")
        self.assertEqual(bytes(r.key), b"")

    def test_bad_bytes_are_record_errors(self):
        with self.assertRaisesRegex(runnel.RecordError, "not UTF-8"):
            runnel.Record.of(value=b"\xff\xfe").value_str()
        with self.assertRaisesRegex(runnel.RecordError, "not the JSON expected"):
            runnel.Record.of(value=b"{nope").value_json()
        with self.assertRaisesRegex(runnel.RecordError, "not the JSON expected"):
            runnel.Record.of(value=b"\xff").value_json()

    def test_a_large_value_is_not_copied_to_be_read(self):
        big = b"x" * (1 << 20)
        r = runnel.Record.of(value=big)
        self.assertEqual(len(r.value), 1 << 20)
        self.assertEqual(r.value.obj is r._data.obj, True)


class FilterTest(unittest.TestCase):
    def test_a_function_filter_keeps_drops_and_fails_records(self):
        rn = fresh()

        @rn.filter
        def keep(record):
            v = record.value_json()
            if "x" not in v:
                raise rn.RecordError("no x")
            return v["x"] > 1

        self.assertIsNone(rn._init([]))
        data, index = batch({"value": b'{"x": 2}'}, {"value": b'{"x": 1}'}, {"value": b"{}"}, {"value": b"oops"})
        keep_bytes, failures = rn._filter(data, index)
        self.assertEqual(keep_bytes, b"\x01\x00\x00\x00")
        self.assertEqual([i for i, _ in failures], [2, 3])
        self.assertEqual(failures[0][1], "no x")

    def test_a_class_filter_is_built_from_config_and_keeps_its_state(self):
        rn = fresh()

        @rn.filter
        class AtLeast:
            def __init__(self, config):
                self.min = config.float("min")
                self.seen = 0

            def filter(self, record):
                self.seen += 1
                return float(record.value_str()) >= self.min

        self.assertIsNone(rn._init([("min", "2")]))
        self.assertEqual(rn._filter(*batch({"value": b"1"}, {"value": b"3"}))[0], b"\x00\x01")
        self.assertEqual(rn._filter(*batch({"value": b"2"}))[0], b"\x01")
        self.assertEqual(rn._registered.call.__self__.seen, 3)

    def test_a_bad_config_refuses_the_deployment_naming_the_key(self):
        rn = fresh()

        @rn.filter
        class Needs:
            def __init__(self, config):
                config.require("field")

            def filter(self, record):
                return True

        self.assertEqual(rn._init([]), "missing config `field` (set it with --config field=...)")
        rn2 = fresh()

        @rn2.filter
        class Num:
            def __init__(self, config):
                config.float("min")

            def filter(self, record):
                return True

        self.assertEqual(rn2._init([("min", "ten")]), "config `min` = 'ten' is not a number")

    def test_init_runs_once_for_a_function(self):
        rn = fresh()
        calls = []

        @rn.init
        def setup(config):
            calls.append(dict(config))

        @rn.filter
        def keep(record):
            return True

        self.assertIsNone(rn._init([("a", "b")]))
        self.assertEqual(calls, [{"a": "b"}])

    def test_any_other_exception_is_a_bug_and_goes_up(self):
        rn = fresh()

        @rn.filter
        def boom(record):
            return 1 / 0

        rn._init([])
        with self.assertRaises(ZeroDivisionError):
            rn._filter(*batch({"value": b"1"}))

    def test_one_function_per_component(self):
        rn = fresh()

        @rn.filter
        def a(record):
            return True

        with self.assertRaisesRegex(TypeError, "one function"):

            @rn.map
            def b(record):
                return None

    def test_no_function_refuses_the_deployment(self):
        rn = fresh()
        self.assertIn("registered no function", rn._init([]))


class MapAndScorerTest(unittest.TestCase):
    def test_a_map_returns_zero_one_or_many_outputs_framed_in_order(self):
        rn = fresh()

        @rn.map
        def split(record):
            words = record.value_str().split()
            if not words:
                return None
            if len(words) == 1:
                return rn.Output(words[0], key=record.key)
            return [rn.Output(w, headers=[("i", str(i))]) for i, w in enumerate(words)]

        rn._init([])
        counts, data, index, failures = rn._outputs(
            *batch({"value": b"a b", "key": b"k"}, {"value": b""}, {"value": b"c", "key": b"k2"}), "map"
        )
        self.assertEqual(counts, [2, 0, 1])
        self.assertEqual(failures, [])
        out = frames(data, index)
        self.assertEqual([bytes(r.value) for r in out], [b"a", b"b", b"c"])
        self.assertEqual([None if r.key is None else bytes(r.key) for r in out], [None, None, b"k2"])
        self.assertEqual([(n, bytes(v)) for n, v in out[1].headers], [("i", b"1")])
        # Output frames say "the host chooses": partition and offset -1, no time.
        self.assertEqual((out[0].partition, out[0].offset, out[0].timestamp_ms), (-1, -1, None))
        # Frames are back to back: each starts where the one before ends.
        self.assertEqual(index[0], 0)
        self.assertEqual(len(data), index[2] + 32 + 2 + 1)

    def test_output_json_routing_and_headers(self):
        o = runnel.Output.json({"p": 1e-05, "s": "é"}, key=b"k").with_header("h", None).to("alerts")
        r = frames(*self._one(o))[0]
        self.assertEqual(r.value_json(), {"p": 1e-05, "s": "é"})
        self.assertEqual([(n, None if v is None else bytes(v)) for n, v in r.headers], [("h", None), ("runnel-output", b"alerts")])
        with self.assertRaisesRegex(ValueError, "not JSON compliant"):
            runnel.Output.json(float("nan"))

    def _one(self, o):
        data = bytearray()
        runnel._frame(data, o.key, o.value, o.headers, o.timestamp_ms)
        return bytes(data), [0]

    def test_a_scorer_is_built_from_config_and_model_bytes(self):
        rn = fresh()

        @rn.scorer
        class Times:
            def __init__(self, config, model):
                self.k = float(model.decode())
                self.name = config.get("name", "m")

            def score(self, record):
                try:
                    x = float(record.value_str())
                except ValueError:
                    raise rn.RecordError(f"not a number: {record.value_str()!r}") from None
                return rn.Output.json({"score": x * self.k, "model": self.name})

        self.assertIsNone(rn._init([("name", "x")], b"2.5"))
        counts, data, index, failures = rn._outputs(*batch({"value": b"2"}, {"value": b"nan?"}), "score")
        self.assertEqual(counts, [1, 0])
        self.assertEqual(frames(data, index)[0].value_json(), {"score": 5.0, "model": "x"})
        self.assertEqual(failures, [(1, "not a number: 'nan?'")])

    def test_a_scorer_must_return_one_output(self):
        rn = fresh()

        @rn.scorer
        class Nothing:
            def __init__(self, config, model):
                pass

            def score(self, record):
                return None

        rn._init([], b"")
        with self.assertRaisesRegex(TypeError, "exactly one"):
            rn._outputs(*batch({"value": b"1"}), "score")

    def test_a_scorer_on_a_function_is_refused_with_what_to_write(self):
        rn = fresh()
        with self.assertRaisesRegex(TypeError, "goes on a class"):

            @rn.scorer
            def f(record):
                return None


class ContractTest(unittest.TestCase):
    def test_the_shipped_wit_is_the_package_the_sdk_names(self):
        with open(os.path.join(HERE, "..", "runnel", "wit", "runnel.wit"), encoding="utf-8") as f:
            text = f.read()
        # The WIT escapes the keyword: `package runnel:%stream@0.1.0;`.
        self.assertIn(f"package {runnel.WIT_PACKAGE.replace(':stream', ':%stream')};", text)

    def test_the_frame_header_is_32_bytes(self):
        self.assertEqual(struct.calcsize("<iqqIII"), 32)


if __name__ == "__main__":
    unittest.main()
