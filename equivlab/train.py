"""The supervised training API at its pinned path, `equivlab.train`.

`equivlab.train.train_and_evaluate(config, workdir, *, model=None)` and
`equivlab.train.TrainConfig` are the names other code relies on. The engine
lives in the package `equivlab.training`, one module per concern; its public
names are re-exported here.
"""

from equivlab.training import (
  AUGMENTS,
  COMPUTE_DTYPES,
  LOSSES,
  OPTIMIZERS,
  SCHEDULES,
  CheckpointWriteError,
  Steps,
  StepSpec,
  TrainConfig,
  TrainResult,
  TrainState,
  WorkdirInUseError,
  WorkdirLock,
  augment,
  build_model,
  create_train_state,
  eval_step_fn,
  evaluate,
  load_variables,
  make_optimizer,
  make_schedule,
  make_steps,
  model_kwargs_dict,
  prepare,
  train_and_evaluate,
  train_step_fn,
  validate_config,
)

__all__ = [
  "AUGMENTS",
  "COMPUTE_DTYPES",
  "CheckpointWriteError",
  "LOSSES",
  "OPTIMIZERS",
  "SCHEDULES",
  "StepSpec",
  "Steps",
  "TrainConfig",
  "TrainResult",
  "TrainState",
  "WorkdirInUseError",
  "WorkdirLock",
  "augment",
  "build_model",
  "create_train_state",
  "eval_step_fn",
  "evaluate",
  "load_variables",
  "make_optimizer",
  "make_schedule",
  "make_steps",
  "model_kwargs_dict",
  "prepare",
  "train_and_evaluate",
  "train_step_fn",
  "validate_config",
]
