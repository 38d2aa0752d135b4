"""The component's exports: the ``WitWorld`` that componentize-py calls,
adapting the WIT types to the SDK's plain-Python calls in ``runnel``.

Only a component imports this (``runnel build`` makes it the app module's
export); ``wit_world`` is the bindings componentize-py generates from
``runnel/wit`` for the world being built. componentize-py makes a new
``WitWorld`` for every call, so it holds nothing: the instance's state is
in ``runnel``'s module globals.
"""

from componentize_py_types import Err
from wit_world.imports import types

import runnel


def _failures(failures):
    return [types.Failure(i, types.RecordError(m)) for i, m in failures]


class WitWorld:
    def init(self, config, model=None):
        message = runnel._init(config, model)
        if message is not None:
            raise Err(message)

    def filter(self, batch):
        keep, failures = runnel._filter(batch.data, batch.index)
        return types.Verdicts(keep, _failures(failures))

    def map(self, batch):
        counts, data, index, failures = runnel._outputs(batch.data, batch.index, "map")
        return types.Outputs(counts, types.Batch(data, index), _failures(failures))

    def score(self, batch):
        counts, data, index, failures = runnel._outputs(batch.data, batch.index, "score")
        return types.Outputs(counts, types.Batch(data, index), _failures(failures))
