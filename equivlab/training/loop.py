"""`train_and_evaluate`: any flax model in, trained state and metrics out.

The loop trains on `config.dataset`'s train split, evaluates after every
epoch, and checkpoints at every epoch end, every `checkpoint_every_steps`
steps and every `checkpoint_every_secs` seconds. A second call with the
same workdir resumes from the newest intact checkpoint and ends with
bitwise the same parameters and metrics as a run that was never
interrupted (the per-epoch running sums and the history are checkpointed
with the state). A workdir is used by one live run at a time
(`checkpoint.WorkdirLock`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from equivlab import checks, data, parallel
from equivlab.training import checkpoint, metrics, optimizers, state, steps
from equivlab.training.config import RESUMABLE_CHANGES, TrainConfig
from equivlab.training.result import TrainResult

Arrays = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass
class _Run:
  """The host-side book-keeping of one run."""

  config: TrainConfig
  workdir: pathlib.Path
  mesh: jax.sharding.Mesh
  steps: steps.Steps
  schedule: Any
  state: state.TrainState
  checkpointer: checkpoint.Checkpointer
  steps_per_epoch: int
  total_steps: int
  meta_config: dict[str, Any]
  label: str = ""
  step: int = 0
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  sums: dict[str, float] = dataclasses.field(default_factory=dict)
  pending: list[tuple[int, Any]] = dataclasses.field(default_factory=list)
  writer: metrics.MetricWriter | None = None
  last_loss: float = float("nan")
  last_save: float = dataclasses.field(default_factory=time.monotonic)
  epoch_start: float = dataclasses.field(default_factory=time.perf_counter)

  @property
  def primary(self) -> bool:
    return parallel.is_primary()


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the run stopped.

  Attributes:
    step: the step (counting from 1) whose loss was not finite.
    loss: that loss (nan, inf or -inf).
  """

  def __init__(self, message: str, *, step: int, loss: float):
    super().__init__(message)
    self.step = step
    self.loss = loss

  def __reduce__(self):
    return _rebuild_non_finite, (str(self), self.step, self.loss)


def _rebuild_non_finite(message: str, step: int, loss: float):
  return NonFiniteLossError(message, step=step, loss=loss)


def _empty_sums() -> dict[str, float]:
  return {"loss": 0.0, "accuracy": 0.0, "count": 0}


def train_and_evaluate(
  config: TrainConfig,
  workdir: str | os.PathLike,
  *,
  model: nn.Module | None = None,
) -> TrainResult:
  """Trains a model on `config.dataset`, resuming from `workdir`.

  After every epoch the model is evaluated on the test split (and on
  `config.extra_eval_datasets`). Writes into `workdir`: `checkpoints/`
  (orbax), `metrics.jsonl`, `tensorboard/` and `config.json`.

  Args:
    config: the run's `TrainConfig`.
    workdir: directory for checkpoints and metrics (created if missing).
    model: any flax linen module mapping images `[N, H, W, C]` to logits
      `[N, K]` and taking a `train` keyword (batch norm statistics in the
      "batch_stats" collection, dropout from the "dropout" rng); None
      builds `config.model` with `config.model_kwargs`.

  Returns:
    A `TrainResult`: the trained parameters and batch statistics, the last
    epoch's metrics and the per-epoch history; it reads as a mapping of
    the final metrics ("train_loss", "test_accuracy", ..., "step",
    "epoch", "num_params", "history").

  Raises:
    ValueError / TypeError: for an invalid config or model, an unknown
      data set, labels outside `[0, num_classes)`, images the model cannot
      take, a batch size larger than the data or not divisible by the
      device count, or a workdir holding a checkpoint of a different run.
    FileNotFoundError: if a tfds data set is not prepared.
    checkpoint.WorkdirInUseError: if another live run uses `workdir`.
    checkpoint.CheckpointWriteError: if a checkpoint or metrics file cannot
      be written (disk full, read-only, a file in the way).
    NonFiniteLossError: (a `FloatingPointError`) if the loss becomes
      non-finite, with the step and the loss as `.step` and `.loss`; the
      last good checkpoint stays in the workdir.
  """
  if not isinstance(config, TrainConfig):
    raise TypeError(
      f"config must be a TrainConfig, got {type(config).__name__}."
    )
  # A bad model name or keyword fails here, before any data is loaded.
  named = model is None
  model = state.build_model(config) if named else state.check_module(model)
  train, test_sets = _load_data(config)
  given_classes = config.num_classes
  config = _resolve_classes(config, train[1], test_sets)
  if not named and given_classes is None:
    config = _classes_of_module(config, model, train[0][:2])
  if named and config.model != "custom":
    if model.num_classes != config.num_classes:  # taken from the labels
      model = model.clone(num_classes=config.num_classes)
  else:
    config = state.record_module(config, model)
  mesh = parallel.make_mesh(config.num_devices)
  _check_batching(config, len(train[1]), mesh.devices.size)
  _check_augmentation(config, train[0].shape)
  workdir = pathlib.Path(workdir).absolute()
  lock = checkpoint.WorkdirLock(workdir) if parallel.is_primary() else None
  with (
    lock or _nothing(),
    checkpoint.Checkpointer(workdir, config.max_checkpoints) as checkpointer,
  ):
    run = _start(config, model, workdir, mesh, checkpointer, train[0])
    try:
      _train_epochs(run, train, test_sets)
      checkpointer.wait()
    finally:
      if run.writer is not None:
        run.writer.close()
  return TrainResult.from_run(
    config=config,
    model=model,
    state=run.state,
    history=run.history,
    step=run.step,
  )


class _nothing:  # noqa: N801 (a stand-in context manager)
  def __enter__(self):
    return None

  def __exit__(self, *exc_info):
    return False


def prepare(
  config: TrainConfig,
  sample_input: Any,
  *,
  model: nn.Module | None = None,
  tx: Any = None,
  total_steps: int | None = None,
  key: jax.Array | None = None,
) -> tuple[state.TrainState, steps.Steps]:
  """A fresh state and the jitted steps of `config`.

  `train_and_evaluate` starts every run with it; benchmarks, notebooks and
  tests that drive the steps themselves call it too.

  Args:
    config: the settings (the model when `model` is None, the optimizer
      when `tx` is None, the step settings).
    sample_input: images `[N, H, W, C]` of the size the model will see.
    model: any flax module; None builds `config`'s (`build_model`).
    tx: the optimizer; None builds `config`'s over `total_steps`.
    total_steps: the run's length, for the decaying schedules (default 1;
      unused when `tx` is given).
    key: the initialisation key (default: `init_key(config)`, the key
      `train_and_evaluate` starts from, so both begin at the same state).

  Returns:
    `(state, steps)`: a `TrainState` at step 0 and `Steps(train_step,
    eval_step)`.

  Raises:
    ValueError: if the model does not map `sample_input` to logits
      `[N, num_classes]` (see `create_train_state`).
  """
  model = state.build_model(config) if model is None else model
  if tx is None:
    tx, _ = optimizers.make_optimizer(config, total_steps or 1)
  key = init_key(config) if key is None else key
  initial = state.create_train_state(
    key, config, sample_input, model=model, tx=tx
  )
  return initial, steps.make_steps(
    model, tx, steps.StepSpec.from_config(config)
  )


def init_key(config: TrainConfig) -> jax.Array:
  """The key a run's parameters (and its state's key) are made from.

  `create_train_state(init_key(config), config, images[:2])` is the state
  `train_and_evaluate(config, ...)` starts from.
  """
  return jax.random.split(jax.random.PRNGKey(config.seed))[0]


def _data_key(config: TrainConfig) -> jax.Array:
  """The key of the run's batch order."""
  return jax.random.split(jax.random.PRNGKey(config.seed))[1]


def _load_data(config: TrainConfig) -> tuple[Arrays, dict[str, Arrays]]:
  def load(name: str, split: str, limit: int | None) -> Arrays:
    images, labels = data.load_dataset(
      name, split, data_dir=config.data_dir, download=config.download
    )
    if limit is not None:
      images, labels = images[:limit], labels[:limit]
    return images, labels

  train = load(config.dataset, "train", config.train_limit)
  test_sets = {"test": load(config.dataset, "test", config.test_limit)}
  for name in config.extra_eval_datasets:
    test_sets[f"{name}/test"] = load(name, "test", config.test_limit)
  return train, test_sets


def _classes_of_module(
  config: TrainConfig, model: nn.Module, images: np.ndarray
) -> TrainConfig:
  """`config` with `num_classes` raised to the width of `model`'s logits.

  For a module of the user's own when `num_classes` was taken from the
  labels: a subset of the data may lack the last classes. Computed from
  shapes only (`jax.eval_shape`); an output that is not `[N, K]`, or
  narrower than the labels need, is left to `create_train_state` to
  report.
  """
  shape = state.output_shape(model, images)
  if len(shape) != 2 or shape[-1] <= config.num_classes:
    return config
  return dataclasses.replace(config, num_classes=int(shape[-1]))


def _resolve_classes(
  config: TrainConfig, train_labels: np.ndarray, test_sets: dict[str, Arrays]
) -> TrainConfig:
  """`config` with `num_classes` set; every label checked against it."""
  if config.num_classes is None:
    config = dataclasses.replace(
      config, num_classes=int(train_labels.max()) + 1
    )
  for name, labels in [("train", train_labels)] + [
    (n, y) for n, (_, y) in test_sets.items()
  ]:
    try:
      checks.check_labels("labels", labels, config.num_classes)
    except ValueError as error:
      raise ValueError(
        f"the {name} labels of {config.dataset!r} do not fit num_classes="
        f"{config.num_classes}: {error} Raise num_classes to at least "
        f"{int(np.max(labels)) + 1}, or leave it None to take it from the "
        "training labels."
      ) from None
  return config


def _check_batching(config: TrainConfig, num_train: int, devices: int):
  if config.batch_size > num_train:
    raise ValueError(
      f"batch_size {config.batch_size} is larger than the {num_train} "
      f"training examples of {config.dataset!r}; use batch_size <= "
      f"{num_train}."
    )
  if config.batch_size % devices:
    raise ValueError(
      f"batch_size {config.batch_size} is not divisible by the {devices} "
      f"devices; use a multiple of {devices} or set num_devices."
    )


def _check_augmentation(config: TrainConfig, shape: tuple[int, ...]) -> None:
  """Raises if the augmentation's size does not fit the images."""
  largest = data.largest_random_shift(shape[1], shape[2])
  field = {"shift": "max_shift", "crop_flip": "crop_padding"}.get(
    config.augment
  )
  if field is not None and getattr(config, field) > largest:
    raise ValueError(
      f"{field} must be at most {largest} for the {shape[1]}x{shape[2]} "
      f"images of {config.dataset!r} (a larger shift can move the centre "
      f"out of the frame), got {getattr(config, field)}."
    )
  if config.augment == "rotate" and config.max_angle > math.pi:
    raise ValueError(
      f"max_angle must be at most pi (radians), got {config.max_angle}."
    )


def _start(config, model, workdir, mesh, checkpointer, train_images) -> _Run:
  """Prepares the state and the steps, and restores the newest checkpoint."""
  steps_per_epoch = len(train_images) // config.batch_size
  total_steps = steps_per_epoch * config.num_epochs
  tx, schedule = optimizers.make_optimizer(config, total_steps)
  initial, run_steps = prepare(config, train_images[:2], model=model, tx=tx)
  run = _Run(
    config=config,
    workdir=workdir,
    mesh=mesh,
    steps=run_steps,
    schedule=schedule,
    state=parallel.replicate(initial, mesh),
    checkpointer=checkpointer,
    steps_per_epoch=steps_per_epoch,
    total_steps=total_steps,
    meta_config={
      **config.to_json(),
      "model_fingerprint": state.model_fingerprint(model),
    },
    label=type(model).__name__ if config.model == "custom" else config.model,
    sums=_empty_sums(),
  )
  _restore(run)
  if run.primary:
    checkpoint.ensure_directory(workdir)
    with checkpoint.write_errors(str(workdir / "config.json")):
      (workdir / "config.json").write_text(
        json.dumps(run.meta_config, indent=2) + "\n"
      )
  run.writer = metrics.MetricWriter(workdir, run.step, run.primary)
  if 0 < run.step < run.total_steps:
    run.writer.write({"kind": "resume", "step": run.step}, "events")
  return run


def _restore(run: _Run) -> None:
  target = jax.tree_util.tree_map(
    ocp.utils.to_shape_dtype_struct, _checkpoint_tree(run.state)
  )
  restored = run.checkpointer.restore_latest(
    target, check_meta=lambda meta: _check_same_run(meta, run)
  )
  if restored is None:
    return
  run.state = run.state.replace(**restored.state)
  run.step = int(jax.device_get(run.state.step))
  run.history, run.sums = restored.meta["history"], restored.meta["sums"]
  logging.info("Resuming %s from step %d.", run.workdir, run.step)


def _checkpoint_tree(train_state: state.TrainState) -> dict[str, Any]:
  tree = {
    "step": train_state.step,
    "params": train_state.params,
    "batch_stats": train_state.batch_stats,
    "opt_state": train_state.opt_state,
    "key": train_state.key,
  }
  if train_state.loss_scale:  # float16 only: other checkpoints unchanged.
    tree["loss_scale"] = train_state.loss_scale
  return tree


def _check_same_run(meta: dict[str, Any], run: _Run) -> None:
  """Raises ValueError if the checkpoint in the workdir is of another run."""
  saved, current = meta.get("config"), run.meta_config
  if not isinstance(saved, dict) or "history" not in meta:
    raise ValueError(
      f"workdir {run.workdir} holds a checkpoint that was not written by "
      "equivlab.train; use a fresh workdir."
    )
  keys = ("model", "model_kwargs", "model_class", "model_fingerprint")
  if any(saved.get(k, current[k]) != current[k] for k in keys):
    raise ValueError(
      f"workdir {run.workdir} holds a checkpoint of {_describe(saved)}, but "
      f"this run trains {_describe(current)}; use a fresh workdir, or the "
      "same model to resume."
    )
  # A field added since the checkpoint was written counts as its default.
  saved = {**TrainConfig().to_json(), **saved}
  differ = sorted(
    name
    for name in set(saved) | set(current)
    if name not in RESUMABLE_CHANGES
    and name not in keys
    and saved.get(name) != current.get(name)
  )
  if differ:
    details = ", ".join(
      f"{n}: saved {saved.get(n)!r} vs now {current.get(n)!r}" for n in differ
    )
    raise ValueError(
      f"workdir {run.workdir} holds a checkpoint of a different run "
      f"({details}); use a fresh workdir, or the same config to resume."
    )


def _describe(config: dict[str, Any]) -> str:
  """The model of a recorded config: its name or class, and its module."""
  module = config.get("model_fingerprint") or "(module not recorded)"
  if config.get("model") == "custom":
    return f"custom model {module} (class {config.get('model_class')})"
  return f"model {config.get('model')!r}, {module}"


def _train_epochs(run: _Run, train: Arrays, test_sets: dict[str, Arrays]):
  """The loop over epochs and batches, from `run.step` to the end."""
  from tqdm.auto import tqdm  # noqa: PLC0415 (slow import)

  config = run.config
  data_key = _data_key(config)
  with tqdm(
    total=run.total_steps,
    initial=run.step,
    unit="step",
    disable=not (run.primary and config.progress),
    mininterval=1.0,
    desc=f"{run.label} on {config.dataset}",
  ) as bar:
    for epoch in range(run.step // run.steps_per_epoch, config.num_epochs):
      batches = data.iterate_batches(
        *train,
        config.batch_size,
        key=data_key,
        epoch=epoch,
        last_batch="drop",
        start=run.step - epoch * run.steps_per_epoch,
      )
      for batch in batches:
        sharded = parallel.shard_batch(metrics.local_rows(batch), run.mesh)
        run.state, step_metrics = run.steps.train_step(run.state, sharded)
        run.step += 1
        run.pending.append((run.step, step_metrics))
        bar.update(1)
        _after_step(run, epoch, test_sets, bar)


def _after_step(run: _Run, epoch: int, test_sets, bar) -> None:
  """Logging, the epoch's evaluation and checkpoints after one step."""
  config, step = run.config, run.step
  end_of_epoch = step % run.steps_per_epoch == 0
  logged = step % config.log_every_steps == 0
  save = end_of_epoch or (
    config.checkpoint_every_steps is not None
    and step % config.checkpoint_every_steps == 0
  )
  if not save and config.checkpoint_every_secs is not None:
    save = _time_due(run, check_now=logged or jax.process_count() == 1)
  if logged or save or end_of_epoch:
    _flush(run)
    bar.set_postfix(loss=f"{run.last_loss:.4f}")
  if end_of_epoch:
    _end_epoch(run, epoch, test_sets)
  if save:
    _save(run)


def _time_due(run: _Run, check_now: bool) -> bool:
  """Whether `checkpoint_every_secs` have passed (agreed by all processes)."""
  if not check_now:
    return False
  due = time.monotonic() - run.last_save >= run.config.checkpoint_every_secs
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
  return due


def _flush(run: _Run) -> None:
  """Fetches pending step metrics, stops on a non-finite loss, logs them."""
  pending = jax.device_get(run.pending)
  run.pending = []
  for at, values in pending:
    if not np.isfinite(values["loss"]):
      _stop_non_finite(run, at, float(values["loss"]))
    run.sums["loss"] += float(values["loss"])
    run.sums["accuracy"] += float(values["accuracy"])
    run.sums["count"] += 1
    run.last_loss = float(values["loss"])
    if at % run.config.log_every_steps == 0:
      record = {"kind": "step", "step": at}
      record.update({k: float(v) for k, v in values.items()})
      record["learning_rate"] = float(run.schedule(at - 1))
      run.writer.write(record, "train")


def _stop_non_finite(run: _Run, step: int, loss: float) -> None:
  run.checkpointer.wait()
  kept = run.checkpointer.latest_step()
  where = (
    f"The last good checkpoint (step {kept}) is kept in "
    f"{run.checkpointer.directory}"
    if kept is not None
    else "No checkpoint had been written yet, so the run will start over"
  )
  raise NonFiniteLossError(
    f"non-finite loss {loss} at step {step}; training stopped. {where}. "
    "Lower the learning rate or check the data.",
    step=step,
    loss=loss,
  )


def _end_epoch(run: _Run, epoch: int, test_sets: dict[str, Arrays]) -> None:
  sums = run.sums
  record = {
    "epoch": epoch + 1,
    "step": run.step,
    "train_loss": sums["loss"] / sums["count"],
    "train_accuracy": sums["accuracy"] / sums["count"],
  }
  num_devices = run.mesh.devices.size
  eval_batch = -(-run.config.eval_batch_size // num_devices) * num_devices
  for name, (images, labels) in test_sets.items():
    result = metrics.evaluate(
      run.steps.eval_step,
      run.state,
      images,
      labels,
      batch_size=eval_batch,
      mesh=run.mesh,
    )
    record[f"{name}_loss"] = result["loss"]
    record[f"{name}_accuracy"] = result["accuracy"]
  run.history.append(record)
  run.sums = _empty_sums()
  elapsed = time.perf_counter() - run.epoch_start
  run.epoch_start = time.perf_counter()
  run.writer.write(
    {"kind": "epoch", **record, "epoch_seconds": elapsed}, "epoch"
  )
  logging.info(
    "epoch %d/%d: %s",
    epoch + 1,
    run.config.num_epochs,
    ", ".join(f"{k}={v:.4f}" for k, v in record.items()),
  )


def _save(run: _Run) -> None:
  meta = {"config": run.meta_config, "history": run.history, "sums": run.sums}
  # A snapshot: the loop goes on mutating its history and sums.
  meta = json.loads(json.dumps(meta))
  run.checkpointer.save(run.step, _checkpoint_tree(run.state), meta)
  run.last_save = time.monotonic()
