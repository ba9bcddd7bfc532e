"""`load_variables`: a finished (or interrupted) run's model, from disk."""

import os
import pathlib
from typing import Any

from equivlab.training.checkpoint import Checkpointer
from equivlab.training.config import TrainConfig


def load_variables(
  workdir: str | os.PathLike, step: int | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
  """The config and model variables saved in a workdir's checkpoint.

  `train_and_evaluate` returns the trained variables itself; this is for
  reading a run back later (another process, a notebook).

  Args:
    workdir: the workdir of a `train_and_evaluate` run.
    step: which checkpoint; None = the newest intact one (a damaged newer
      one is reported in the log and skipped; the workdir is not changed).

  Returns:
    `(config, variables)`: the run's `TrainConfig` (with `num_classes`
    resolved) and `{"params": ..., "batch_stats": ...}` ready for
    `equivlab.training.build_model(config).apply` (for a run of a named
    model).

  Raises:
    FileNotFoundError: if the workdir holds no (intact) checkpoint.
    ValueError: if `step` is given and that checkpoint cannot be read.
  """
  workdir = pathlib.Path(workdir).absolute()
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoint in {directory}.")
  with Checkpointer(workdir, read_only=True) as checkpointer:
    if step is None:
      restored = checkpointer.restore_latest(set_aside=False)
    else:
      try:
        restored = checkpointer.restore(step)
      except Exception as error:  # noqa: BLE001 (orbax's many kinds)
        raise ValueError(
          f"the checkpoint of step {step} in {directory} cannot be read: "
          f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        ) from None
  if restored is None:
    raise FileNotFoundError(f"no intact checkpoint in {directory}.")
  saved = {
    k: v for k, v in restored.meta["config"].items() if k != "model_fingerprint"
  }
  variables = {"params": restored.state["params"]}
  if restored.state.get("batch_stats"):
    variables["batch_stats"] = restored.state["batch_stats"]
  return TrainConfig.from_json(saved), variables
