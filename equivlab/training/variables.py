"""Reading a run back from disk: its config, variables and model."""

import os
import pathlib
from typing import Any

import flax.linen as nn

from equivlab.training import state
from equivlab.training.checkpoint import Checkpointer, Restored
from equivlab.training.config import TrainConfig


def _restore(workdir: pathlib.Path, step: int | None) -> Restored:
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
  return restored


def _read(
  workdir: str | os.PathLike, step: int | None
) -> tuple[TrainConfig, dict[str, Any], str | None]:
  """(config, variables, the recorded model fingerprint) of a checkpoint."""
  restored = _restore(pathlib.Path(workdir).absolute(), step)
  saved = dict(restored.meta["config"])
  fingerprint = saved.pop("model_fingerprint", None)
  variables = {"params": restored.state["params"]}
  if restored.state.get("batch_stats"):
    variables["batch_stats"] = restored.state["batch_stats"]
  return TrainConfig.from_json(saved), variables, fingerprint


def _check_recorded(
  model: nn.Module, fingerprint: str | None, workdir: Any, what: str
) -> None:
  mine = state.model_fingerprint(model)
  if fingerprint is not None and mine != fingerprint:
    raise ValueError(
      f"workdir {workdir} holds a run of {fingerprint}, but {what} is "
      f"{mine}; pass the module the run trained."
    )


def load_variables(
  workdir: str | os.PathLike,
  step: int | None = None,
  *,
  model: nn.Module | None = None,
) -> tuple[TrainConfig, dict[str, Any]]:
  """The config and model variables saved in a workdir's checkpoint.

  `train_and_evaluate` returns the trained variables itself; this is for
  reading a run back later (another process, a notebook). Apply them with
  `build_model(config)` (a named model, or a "custom" one whose class can
  be imported), with the module the run trained, or use `load_model`.

  Args:
    workdir: the workdir of a `train_and_evaluate` run.
    step: which checkpoint; None = the newest intact one (a damaged newer
      one is reported in one log line and skipped; the workdir is not
      changed).
    model: the module the variables are for, checked against the one the
      run recorded (its class and attributes); None checks nothing.

  Returns:
    `(config, variables)`: the run's `TrainConfig` (`num_classes`
    resolved; model "custom" with `model_class` for a module of the
    user's own) and `{"params": ..., "batch_stats": ...}`.

  Raises:
    FileNotFoundError: if the workdir holds no (intact) checkpoint.
    ValueError: if `step` is given and that checkpoint cannot be read, or
      `model` is not the module the run trained.
  """
  config, variables, fingerprint = _read(workdir, step)
  if model is not None:
    _check_recorded(state.check_module(model), fingerprint, workdir, "model")
  return config, variables


def load_model(
  workdir: str | os.PathLike,
  step: int | None = None,
  *,
  model: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
  """The module of a run and its saved variables, ready for `apply`.

  Args:
    workdir: the workdir of a `train_and_evaluate` run.
    step: which checkpoint (see `load_variables`).
    model: the module the run trained; None rebuilds it from the config
      (`build_model`: a named model, or a "custom" one whose class can be
      imported and whose attributes were all recorded).

  Returns:
    `(model, variables)`: `model.apply(variables, x, train=False)` gives
    the run's logits.

  Raises:
    FileNotFoundError: if the workdir holds no (intact) checkpoint.
    ValueError: if the module cannot be rebuilt, or is not the one the run
      trained (pass `model=`).
  """
  config, variables, fingerprint = _read(workdir, step)
  if model is not None:
    model = state.check_module(model)
    _check_recorded(model, fingerprint, workdir, "model")
    return model, variables
  rebuilt = state.build_model(config)
  _check_recorded(
    rebuilt, fingerprint, workdir, f"the module rebuilt from {config.model!r}"
  )
  return rebuilt, variables
