"""The supervised training engine: any flax model in, trained state out.

Modules by concern:

- `config`: `TrainConfig`, checked when made.
- `optimizers`: the optimizer and learning-rate schedule of a config.
- `state`: `TrainState` (a pure pytree) and `create_train_state`.
- `steps`: the training loss (`training_loss`) and the jitted train and
  eval steps, closed over a model and an optimizer once per run
  (`make_steps`).
- `metrics`: evaluation over whole data sets; metrics.jsonl and
  TensorBoard files.
- `checkpoint`: orbax checkpoints that fall back past damage, the workdir
  lock, clear write errors.
- `variables`: a run read back: `load_variables`, `load_model`.
- `loop`: `train_and_evaluate(config, workdir, *, model=None)`,
  `prepare`, `NonFiniteLossError`.
- `result`: `TrainResult`, what a run gives back.
"""

from equivlab.training.checkpoint import (
  CheckpointWriteError,
  WorkdirInUseError,
  WorkdirLock,
)
from equivlab.training.config import (
  AUGMENTS,
  COMPUTE_DTYPES,
  LOSSES,
  OPTIMIZERS,
  SCHEDULES,
  TrainConfig,
  model_kwargs_dict,
  validate_config,
)
from equivlab.training.loop import (
  NonFiniteLossError,
  init_key,
  prepare,
  train_and_evaluate,
)
from equivlab.training.metrics import evaluate, read_metrics
from equivlab.training.optimizers import make_optimizer, make_schedule
from equivlab.training.result import TrainResult
from equivlab.training.state import (
  TrainState,
  build_model,
  create_train_state,
  record_module,
)
from equivlab.training.steps import (
  LossAux,
  Steps,
  StepSpec,
  augment,
  eval_step_fn,
  make_steps,
  train_step_fn,
  training_loss,
)
from equivlab.training.variables import load_model, load_variables

__all__ = [
  "AUGMENTS",
  "COMPUTE_DTYPES",
  "CheckpointWriteError",
  "LOSSES",
  "LossAux",
  "NonFiniteLossError",
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
  "init_key",
  "load_model",
  "load_variables",
  "make_optimizer",
  "make_schedule",
  "make_steps",
  "model_kwargs_dict",
  "prepare",
  "read_metrics",
  "record_module",
  "train_and_evaluate",
  "train_step_fn",
  "training_loss",
  "validate_config",
]
