"""The native baseline of bench/benches/python.rs: the same Python function
the component runs (its app.py, through the same SDK calls the component's
exports make), run by the machine's CPython on the same packed batches.

    native_guest.py APP_DIR SDK_DIR KIND VALUES_FILE [MODEL_FILE]

VALUES_FILE holds one record value per line. Prints the best of 5 timings
of all the records, in ns per record.
"""

import sys
import time


def main():
    app_dir, sdk_dir, kind, values_file = sys.argv[1:5]
    model = open(sys.argv[5], "rb").read() if len(sys.argv) > 5 else None
    sys.path[:0] = [app_dir, sdk_dir]
    import runnel
    import app  # noqa: F401 - registers the function

    with open(values_file, "rb") as f:
        values = f.read().split(b"\n")[:-1]
    batches = []
    for start in range(0, len(values), 256):
        data, index = bytearray(), []
        for i, v in enumerate(values[start : start + 256]):
            index.append(len(data))
            runnel._frame(data, b"k%d" % i, v, (), 1_700_000_000_000, 0, start + i)
        batches.append((bytes(data), index))
    message = runnel._init([("field", "dep_delay"), ("min", "15")], model)
    assert message is None, message
    best = None
    for _ in range(5):
        t = time.perf_counter_ns()
        for data, index in batches:
            if kind == "filter":
                runnel._filter(data, index)
            else:
                runnel._outputs(data, index, "score")
        elapsed = time.perf_counter_ns() - t
        best = elapsed if best is None else min(best, elapsed)
    print(best / len(values))


if __name__ == "__main__":
    main()
