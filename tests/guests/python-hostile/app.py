"""A Python filter that misbehaves on purpose, by the record's value:

- ``bad``: a RecordError (an expected failure: dead-lettered, no trap);
- ``boom``: a ZeroDivisionError (a bug: the call traps with the traceback);
- ``spin``: loops forever (the call's deadline interrupts it);
- ``hog``: asks for 512 MiB (over the test's 128 MiB memory limit);
- ``exit``: calls sys.exit (WASI's exit: a trap, not the host's exit);
- anything else is kept.
"""

import sys

import runnel


@runnel.filter
def misbehave(record: runnel.Record) -> bool:
    value = record.value_str()
    if value == "bad":
        raise runnel.RecordError("bad on purpose")
    if value == "boom":
        return 1 / 0
    if value == "spin":
        while True:
            pass
    if value == "hog":
        return len(bytearray(512 << 20)) > 0
    if value == "exit":
        sys.exit(3)
    return True
