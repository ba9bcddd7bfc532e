"""The supervised training API at its pinned path, `equivlab.train`.

`equivlab.train.train_and_evaluate(config, workdir, *, model=None)`,
`TrainConfig`, `NonFiniteLossError` and `load_variables` are the names
other code relies on. The engine lives in the package `equivlab.training`,
one module per concern; this module re-exports its public names.
"""

from equivlab import training
from equivlab.training import *  # noqa: F403 (the pinned re-export)

__all__ = training.__all__
