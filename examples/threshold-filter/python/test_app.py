"""Unit tests, run natively by CPython:

    cd examples/threshold-filter/python && PYTHONPATH=../../../guest-sdk/python python3 -m unittest
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "guest-sdk", "python"))

import runnel  # noqa: E402

import app  # noqa: E402


def threshold(**config):
    return app.Threshold(runnel.Config({k.replace("_", "-"): v for k, v in config.items()}))


def keep(t, value):
    return t.filter(runnel.Record.of(value=value))


class ThresholdTest(unittest.TestCase):
    def test_keeps_values_in_range(self):
        t = threshold(field="a.b", min="10", max="20")
        self.assertTrue(keep(t, '{"a":{"b":10}}'))
        self.assertFalse(keep(t, '{"a":{"b":20}}'))
        self.assertFalse(keep(t, '{"a":{"b":null}}'))
        self.assertFalse(keep(t, '{"a":{"b":true}}'))
        self.assertFalse(keep(t, '{"a":[1]}'))
        with self.assertRaises(runnel.RecordError):
            keep(t, "not json")

    def test_on_missing_error_fails_the_record(self):
        t = threshold(field="x", min="1", on_missing="error")
        with self.assertRaisesRegex(runnel.RecordError, "field `x` is missing or not a number"):
            keep(t, "{}")

    def test_bad_config_names_the_key(self):
        with self.assertRaisesRegex(runnel.ConfigError, r"missing config `field` \(set it with --config field=...\)"):
            threshold()
        with self.assertRaisesRegex(runnel.ConfigError, "^set `min`"):
            threshold(field="x")
        with self.assertRaisesRegex(runnel.ConfigError, "^config `min` = 'ten'"):
            threshold(field="x", min="ten")
        with self.assertRaisesRegex(runnel.ConfigError, "^config `on-missing`"):
            threshold(field="x", min="1", on_missing="skip")


if __name__ == "__main__":
    unittest.main()
