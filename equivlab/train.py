"""The supervised training loop: train state, jitted steps, checkpoints.

`train_and_evaluate(config, workdir)` trains `config.model` on
`config.dataset` and returns the final metrics with a per-epoch history. It
is an ordinary Python function (no flags), so notebooks and the experiments
call it the same way. The pieces it is made of are public too:

- `create_train_state(key, config, sample_input)` builds a `TrainState`
  (params in float32, batch statistics, optimizer state, a PRNG key).
- `train_step(state, batch) -> (state, metrics)` and
  `eval_step(state, batch) -> metrics` are pure and jitted once; everything
  they need besides arrays (the model, the optimizer, the loss) lives in
  static fields of the state. Randomness inside a step (augmentation,
  dropout) is `fold_in(state.key, state.step)`, so a step depends on nothing
  but its inputs, which is what makes resuming exact.
- Data parallelism comes from `equivlab.parallel`: the state is replicated,
  every batch is split over a "data" mesh axis, and GSPMD inserts the
  gradient all-reduce (seed 004 6(g) does the same average by hand).

The loop checkpoints with orbax every `checkpoint_every_steps` steps and at
the end; a second call with the same workdir resumes from the latest
checkpoint and ends with bitwise the same parameters and metrics as a run
that was never interrupted (the per-epoch running sums and the history are
checkpointed with the state). Metrics go to `metrics.jsonl` and TensorBoard
event files (tensorboardX) in the workdir, from process 0 only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from equivlab import data, parallel

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop", "adagrad")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
LOSSES = ("softmax_ce", "mse")
AUGMENTS = ("none", "shift", "crop_flip", "rotate")
COMPUTE_DTYPES = ("float32", "bfloat16")

# Config fields a resumed run may change: they do not alter what is computed.
_RESUMABLE_CHANGES = frozenset(
  {
    "checkpoint_every_steps",
    "log_every_steps",
    "max_checkpoints",
    "num_devices",
    "progress",
    "data_dir",
    "download",
  }
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on; every field has a default.

  Attributes:
    model: a name for `equivlab.models.get_model` ("mlp", "cnn", ...).
    model_kwargs: keyword arguments of the model, as a mapping or a tuple of
      `(name, value)` pairs (hashable, so configs can be dict keys).
    dataset: a name for `equivlab.data.load_dataset`; its "train" split
      trains, its "test" split evaluates.
    extra_eval_datasets: more data sets whose "test" split is evaluated
      after every epoch, reported as `"<name>/test_loss"` and
      `"<name>/test_accuracy"` (e.g. "embedded_shift4" for seed 003).
    train_limit: use only the first `train_limit` training examples.
    test_limit: use only the first `test_limit` test examples.
    data_dir: tfds data directory (or the embedded cache directory).
    download: let tfds download a missing data set (needs internet).
    num_classes: number of logits; None takes `max(label) + 1` of the
      training labels.
    num_epochs: passes over the training data.
    batch_size: global batch size (over all devices); the last partial
      batch of an epoch is dropped.
    eval_batch_size: evaluation batch size (rounded up to a multiple of the
      device count); evaluation pads the last batch and masks it out.
    optimizer: "sgd", "momentum", "adam", "rmsprop" or "adagrad".
    learning_rate: peak learning rate.
    momentum: momentum of "momentum" (heavy ball) and first-moment decay
      of "adam".
    schedule: "constant", "cosine" (decay to 0 over the run) or
      "warmup_cosine" (linear warmup from 0, then cosine decay to 0).
    warmup_steps: warmup length of "warmup_cosine"; None = 5% of the steps.
    weight_decay: decoupled weight decay (Loshchilov & Hutter 2019):
      `w -= lr_t * weight_decay * w` after the optimizer's own update.
    l2: coefficient of the penalty `l2 / 2 * sum(w ** 2)` added to the
      loss (so it passes through the optimizer, unlike `weight_decay`).
      Both apply to weight matrices and kernels (ndim >= 2), not to biases
      or normalisation scales.
    loss: "softmax_ce" (cross-entropy of the softmax) or "mse" (mean
      squared error between the logits and the one-hot labels).
    augment: "none"; "shift" (random integer shifts by up to `max_shift`);
      "crop_flip" (random crop with `crop_padding` and horizontal flip);
      "rotate" (uniform random angles in `[-max_angle, max_angle]`).
    max_shift: largest shift of `augment="shift"`, in pixels.
    crop_padding: zero padding of `augment="crop_flip"`, in pixels.
    max_angle: largest angle of `augment="rotate"`, in radians.
    compute_dtype: "float32" or "bfloat16": the dtype of the forward and
      backward computation; parameters and optimizer state stay float32.
    num_devices: devices of the data-parallel mesh; None = all of them.
    seed: seeds initialisation, shuffling, augmentation and dropout.
    checkpoint_every_steps: save a checkpoint every this many steps (and
      always at the end).
    max_checkpoints: how many checkpoints to keep.
    log_every_steps: write a per-step metrics record every this many steps.
    progress: show a tqdm progress bar (rate and ETA) on stderr.
  """

  model: str = "mlp"
  model_kwargs: Any = ()
  dataset: str = "embedded"
  extra_eval_datasets: tuple[str, ...] = ()
  train_limit: int | None = None
  test_limit: int | None = None
  data_dir: str | None = None
  download: bool = False
  num_classes: int | None = None
  num_epochs: int = 10
  batch_size: int = 128
  eval_batch_size: int = 500
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  momentum: float = 0.9
  schedule: str = "constant"
  warmup_steps: int | None = None
  weight_decay: float = 0.0
  l2: float = 0.0
  loss: str = "softmax_ce"
  augment: str = "none"
  max_shift: int = 4
  crop_padding: int = 4
  max_angle: float = math.pi
  compute_dtype: str = "float32"
  num_devices: int | None = None
  seed: int = 0
  checkpoint_every_steps: int = 500
  max_checkpoints: int = 2
  log_every_steps: int = 50
  progress: bool = True


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """The non-array parts of a step, static under jit (hashable)."""

  loss: str = "softmax_ce"
  l2: float = 0.0
  compute_dtype: str = "float32"
  augment: str = "none"
  max_shift: int = 4
  crop_padding: int = 4
  max_angle: float = math.pi


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, plus the static step parts.

  Attributes:
    step: int32 scalar, the number of steps taken.
    params: the model's "params" collection (float32).
    batch_stats: the "batch_stats" collection ({} if the model has none).
    opt_state: the optax state.
    key: uint32 `[2]` PRNG key; step t uses `fold_in(key, t)`.
    apply_fn: the model's `apply` (static).
    tx: the optax transformation (static).
    spec: loss, penalty, dtype and augmentation settings (static).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  key: jax.Array
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  spec: StepSpec = flax.struct.field(pytree_node=False)

  def variables(self) -> dict[str, Any]:
    """The model variables: {"params": ..., "batch_stats": ...}."""
    variables = {"params": self.params}
    if self.batch_stats:
      variables["batch_stats"] = self.batch_stats
    return variables


# ---------------------------------------------------------------------------
# Config validation and the optimizer.
# ---------------------------------------------------------------------------


def model_kwargs_dict(config: TrainConfig) -> dict[str, Any]:
  """`config.model_kwargs` as a dict (it may be a mapping or pairs).

  Raises:
    ValueError: if it is neither a mapping nor `(name, value)` pairs.
  """
  kwargs = config.model_kwargs
  if isinstance(kwargs, Mapping):
    pairs = list(kwargs.items())
  else:
    try:
      pairs = [(str(k), v) for k, v in kwargs]
    except (TypeError, ValueError) as error:
      raise ValueError(
        "model_kwargs must be a mapping or a tuple of (name, value) pairs, "
        f"got {kwargs!r}."
      ) from error
  # Lists (e.g. read back from JSON) become tuples: modules must hash.
  return {k: tuple(v) if isinstance(v, list) else v for k, v in pairs}


def _choice(field: str, value: Any, options: tuple[str, ...]) -> None:
  if value not in options:
    raise ValueError(f"{field} must be one of {options}, got {value!r}.")


def _positive_int(field: str, value: Any, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if (
    not isinstance(value, int | np.integer)
    or isinstance(value, bool)
    or value < 1
  ):
    raise ValueError(f"{field} must be an int >= 1, got {value!r}.")


def validate_config(config: TrainConfig) -> None:
  """Checks every field of `config` that can be checked without data.

  Raises:
    ValueError: naming the first bad field, what it must be and what it is.
  """
  if not isinstance(config, TrainConfig):
    raise ValueError(
      f"config must be a TrainConfig, got {type(config).__name__}."
    )
  _choice("optimizer", config.optimizer, OPTIMIZERS)
  _choice("schedule", config.schedule, SCHEDULES)
  _choice("loss", config.loss, LOSSES)
  _choice("augment", config.augment, AUGMENTS)
  _choice("compute_dtype", config.compute_dtype, COMPUTE_DTYPES)
  for field in (
    "num_epochs",
    "batch_size",
    "eval_batch_size",
    "checkpoint_every_steps",
    "max_checkpoints",
    "log_every_steps",
  ):
    _positive_int(field, getattr(config, field))
  for field in ("train_limit", "test_limit", "num_classes", "num_devices"):
    _positive_int(field, getattr(config, field), allow_none=True)
  if config.warmup_steps is not None and (
    not isinstance(config.warmup_steps, int) or config.warmup_steps < 0
  ):
    raise ValueError(
      f"warmup_steps must be an int >= 0 or None, got {config.warmup_steps!r}."
    )
  for field in ("learning_rate", "momentum", "weight_decay", "l2"):
    value = getattr(config, field)
    if not isinstance(value, int | float) or not math.isfinite(value):
      raise ValueError(f"{field} must be a finite number, got {value!r}.")
    if value < 0:
      raise ValueError(f"{field} must be >= 0, got {value!r}.")
  if not isinstance(config.model, str) or not config.model:
    raise ValueError(f"model must be a non-empty str, got {config.model!r}.")
  if isinstance(config.extra_eval_datasets, str):
    raise ValueError(
      "extra_eval_datasets must be a tuple of names, got the string "
      f"{config.extra_eval_datasets!r}."
    )
  model_kwargs_dict(config)


def _decay_mask(params: Any) -> Any:
  """True for weight matrices and kernels (ndim >= 2), False elsewhere."""
  return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def make_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule of `config` over `total_steps` steps."""
  lr = config.learning_rate
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, max(total_steps, 1))
  warmup = config.warmup_steps
  if warmup is None:
    warmup = max(1, total_steps // 20)
  warmup = min(warmup, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    0.0, lr, warmup, max(total_steps, warmup + 1)
  )


def make_optimizer(
  config: TrainConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax optimizer of `config`, with decoupled weight decay.

  The chain is: the optimizer's scaling (momentum trace, Adam moments, RMS,
  or Adagrad's sum of squares), then `weight_decay * w` added (masked to
  kernels), then the scheduled learning rate; so the decay is decoupled
  from the adaptive scaling, as in AdamW / SGDW.

  Args:
    config: the run's config.
    total_steps: length of the run, for the decaying schedules.

  Returns:
    `(tx, schedule)`.
  """
  schedule = make_schedule(config, total_steps)
  scale = {
    "sgd": optax.identity,
    "momentum": lambda: optax.trace(decay=config.momentum),
    "adam": lambda: optax.scale_by_adam(b1=config.momentum),
    "rmsprop": lambda: optax.scale_by_rms(decay=0.9, eps=1e-8),
    "adagrad": lambda: optax.scale_by_rss(initial_accumulator_value=0.1),
  }[config.optimizer]()
  parts = [scale]
  if config.weight_decay:
    parts.append(optax.add_decayed_weights(config.weight_decay, _decay_mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule


def _step_spec(config: TrainConfig) -> StepSpec:
  return StepSpec(
    loss=config.loss,
    l2=float(config.l2),
    compute_dtype=config.compute_dtype,
    augment=config.augment,
    max_shift=int(config.max_shift),
    crop_padding=int(config.crop_padding),
    max_angle=float(config.max_angle),
  )


def _model_and_optimizer(config: TrainConfig, total_steps: int):
  """The model and optimizer, the same objects for the same settings.

  `train_step` is jitted once per model, optimizer and step settings (they
  are static fields of the state); handing back the same objects lets runs
  that differ only in the seed or the data (e.g. several seeds in one
  process) reuse the compiled steps.
  """
  kwargs = model_kwargs_dict(config)
  key = (
    config.model,
    config.num_classes or 10,
    tuple(sorted(kwargs.items())),
    config.optimizer,
    config.learning_rate,
    config.momentum,
    config.schedule,
    config.warmup_steps,
    config.weight_decay,
    total_steps,
  )
  try:
    hash(key)
  except TypeError:  # An unhashable model argument: build afresh.
    return _build_model_and_optimizer(key)
  return _cached_model_and_optimizer(key)


def _build_model_and_optimizer(key: tuple[Any, ...]):
  from equivlab import models  # noqa: PLC0415 (engineer M's module)

  name, num_classes, kwargs, *_, total_steps = key
  model = models.get_model(name, num_classes=num_classes, **dict(kwargs))
  optimizer_config = TrainConfig(
    optimizer=key[3],
    learning_rate=key[4],
    momentum=key[5],
    schedule=key[6],
    warmup_steps=key[7],
    weight_decay=key[8],
  )
  tx, _ = make_optimizer(optimizer_config, total_steps)
  return model, tx


_cached_model_and_optimizer = functools.lru_cache(maxsize=32)(
  _build_model_and_optimizer
)


@functools.lru_cache(maxsize=32)
def _jitted_init(model: Any, tx: optax.GradientTransformation):
  """One compiled initialisation of the model and its optimizer state.

  Cached per (model, optimizer) pair, which `_model_and_optimizer` already
  reuses across runs that differ only in seed, so such runs compile it once.
  """

  def init(key, x):
    variables = model.init({"params": key, "dropout": key}, x, train=False)
    return variables, tx.init(variables["params"])

  return jax.jit(init)


def create_train_state(
  key: jax.Array,
  config: TrainConfig,
  sample_input: Any,
  *,
  total_steps: int | None = None,
) -> TrainState:
  """Initialises the model of `config` and its optimizer.

  Args:
    key: PRNG key; split into the initialisation key and the state's key.
    config: the run's config (`model`, `model_kwargs`, `num_classes`, the
      optimizer and step settings).
    sample_input: images `[N, H, W, C]` of the size the model will see.
    total_steps: length of the run; needed by the decaying schedules.

  Returns:
    A `TrainState` at step 0 with float32 parameters.

  Raises:
    ValueError: if the config is invalid, the model name unknown, the
      input not `[N, H, W, C]`, or a decaying schedule has no
      `total_steps`.
  """
  validate_config(config)
  if np.ndim(sample_input) != 4:
    raise ValueError(
      "sample_input must be images [N, H, W, C], got shape "
      f"{np.shape(sample_input)}."
    )
  if total_steps is None:
    if config.schedule != "constant":
      raise ValueError(
        f"schedule {config.schedule!r} needs total_steps, got None."
      )
    total_steps = 1
  model, tx = _model_and_optimizer(config, total_steps)
  init_key, state_key = jax.random.split(key)
  sample = jnp.asarray(sample_input[:2], jnp.float32)
  variables, opt_state = _jitted_init(model, tx)(init_key, sample)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    opt_state=opt_state,
    key=state_key,
    apply_fn=model.apply,
    tx=tx,
    spec=_step_spec(config),
  )


# ---------------------------------------------------------------------------
# The jitted steps.
# ---------------------------------------------------------------------------


def _augment(spec: StepSpec, key: jax.Array, images: jax.Array) -> jax.Array:
  if spec.augment == "shift":
    return data.random_shift(key, images, spec.max_shift)
  if spec.augment == "crop_flip":
    crop_key, flip_key = jax.random.split(key)
    images = data.random_crop(crop_key, images, spec.crop_padding)
    return data.random_flip(flip_key, images)
  if spec.augment == "rotate":
    return data.random_rotate(key, images, spec.max_angle)
  return images


def _example_losses(loss: str, logits: jax.Array, labels: jax.Array):
  """Per-example loss `[N]` from float32 logits `[N, K]`."""
  if loss == "mse":
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return jnp.mean(jnp.square(logits - one_hot), axis=-1)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _cast(tree: Any, dtype: str) -> Any:
  if dtype == "float32":
    return tree
  return jax.tree_util.tree_map(
    lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
    tree,
  )


def _l2_penalty(params: Any) -> jax.Array:
  leaves = [p for p in jax.tree_util.tree_leaves(params) if p.ndim >= 2]
  return 0.5 * sum(jnp.sum(jnp.square(p)) for p in leaves)


def _train_step(
  state: TrainState, batch: dict[str, jax.Array]
) -> tuple[TrainState, dict[str, jax.Array]]:
  spec = state.spec
  step_key = jax.random.fold_in(state.key, state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  images = _augment(spec, augment_key, batch["image"])
  labels = batch["label"]

  def loss_fn(params):
    variables = {"params": _cast(params, spec.compute_dtype)}
    mutable = []
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
      mutable = ["batch_stats"]
    logits, updates = state.apply_fn(
      variables,
      _cast(images, spec.compute_dtype),
      train=True,
      rngs={"dropout": dropout_key},
      mutable=mutable,
    )
    logits = logits.astype(jnp.float32)
    data_loss = jnp.mean(_example_losses(spec.loss, logits, labels))
    total = data_loss
    if spec.l2:
      total = total + spec.l2 * _l2_penalty(params)
    return total, (data_loss, logits, updates.get("batch_stats", {}))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (total, (data_loss, logits, batch_stats)), grads = grad_fn(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Keep the stored statistics' dtypes (bfloat16 compute must not change
  # the state's structure, or the step would compile again).
  batch_stats = jax.tree_util.tree_map(
    lambda new, old: new.astype(old.dtype), batch_stats, state.batch_stats
  )
  new_state = state.replace(
    step=state.step + 1,
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
  )
  metrics = {
    "loss": total,
    "data_loss": data_loss,
    "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    "grad_norm": jnp.sqrt(
      sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(grads))
    ),
  }
  return new_state, metrics


def _eval_step(
  state: TrainState, batch: dict[str, jax.Array]
) -> dict[str, jax.Array]:
  spec = state.spec
  variables = _cast(state.variables(), spec.compute_dtype)
  logits = state.apply_fn(
    variables, _cast(batch["image"], spec.compute_dtype), train=False
  ).astype(jnp.float32)
  labels = batch["label"]
  mask = batch.get("mask")
  if mask is None:
    mask = jnp.ones(labels.shape, bool)
  weights = mask.astype(jnp.float32)
  count = jnp.sum(weights)
  losses = _example_losses(spec.loss, logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  denominator = jnp.maximum(count, 1.0)
  return {
    "loss": jnp.sum(losses * weights) / denominator,
    "accuracy": jnp.sum(correct * weights) / denominator,
    "count": count,
  }


train_step = jax.jit(_train_step)
train_step.__doc__ = """One optimizer step on a batch (pure, jitted).

Augments `batch["image"]` with the state's augmentation, runs the model
with `train=True` (dropout from `fold_in(state.key, state.step)`, batch
statistics updated), and applies the optimizer.

Args:
  state: a `TrainState`.
  batch: `{"image": [N, H, W, C] float32, "label": [N] int32}`.

Returns:
  `(new_state, metrics)` with scalar metrics "loss" (data loss plus the L2
  penalty), "data_loss", "accuracy" and "grad_norm".
"""

eval_step = jax.jit(_eval_step)
eval_step.__doc__ = """Loss and accuracy of the model on a batch (jitted).

Args:
  state: a `TrainState`.
  batch: `{"image": [N, H, W, C], "label": [N]}` and optionally a "mask"
    `[N]` bool (False rows are padding and do not count).

Returns:
  Scalars "loss" and "accuracy" (means over the unmasked rows) and "count"
  (the number of unmasked rows).
"""


# ---------------------------------------------------------------------------
# Evaluation, metrics files, checkpoints.
# ---------------------------------------------------------------------------


def _local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's part of a global batch (all of it on one process)."""
  if jax.process_count() == 1:
    return batch
  rows = parallel.process_slice(len(batch["label"]))
  return {name: value[rows] for name, value in batch.items()}


def evaluate(
  state: TrainState,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  batch_size: int,
  mesh: jax.sharding.Mesh,
) -> dict[str, float]:
  """Loss and accuracy over a whole data set (the last batch padded).

  Args:
    state: a (replicated) `TrainState`.
    images: `[N, H, W, C]`.
    labels: `[N]`.
    batch_size: a multiple of the mesh's device count.
    mesh: the data-parallel mesh.

  Returns:
    {"loss": mean loss, "accuracy": fraction correct}.
  """
  loss_sum = correct_sum = count_sum = 0.0
  batches = data.iterate_batches(
    images, labels, batch_size, key=None, last_batch="pad"
  )
  for batch in batches:
    metrics = eval_step(state, parallel.shard_batch(_local_rows(batch), mesh))
    metrics = jax.device_get(metrics)
    count = float(metrics["count"])
    loss_sum += float(metrics["loss"]) * count
    correct_sum += float(metrics["accuracy"]) * count
    count_sum += count
  return {"loss": loss_sum / count_sum, "accuracy": correct_sum / count_sum}


class _MetricWriter:
  """metrics.jsonl and TensorBoard events; silent outside process 0."""

  def __init__(self, workdir: pathlib.Path, resume_step: int, active: bool):
    self.active = active
    self.path = workdir / "metrics.jsonl"
    self._tb = None
    if not active:
      return
    if self.path.exists():
      # Records written after the checkpoint we resume from (all of them
      # when there is none) are redone.
      lines = self.path.read_text().splitlines()
      kept = [
        line
        for line in lines
        if line.strip() and json.loads(line).get("step", 0) <= resume_step
      ]
      self.path.write_text("".join(line + "\n" for line in kept))
    from tensorboardX import SummaryWriter  # noqa: PLC0415 (slow import)

    # purge_step hides events of the lost steps from TensorBoard.
    self._tb = SummaryWriter(
      str(workdir / "tensorboard"), purge_step=resume_step
    )

  def write(self, record: dict[str, Any], prefix: str) -> None:
    if not self.active:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    step = record["step"]
    for name, value in record.items():
      if name not in ("step", "epoch", "kind") and isinstance(
        value, int | float
      ):
        self._tb.add_scalar(f"{prefix}/{name}", value, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _config_json(config: TrainConfig) -> dict[str, Any]:
  fields = dataclasses.asdict(config)
  fields["model_kwargs"] = sorted(
    [k, v] for k, v in model_kwargs_dict(config).items()
  )
  fields["extra_eval_datasets"] = list(config.extra_eval_datasets)
  return json.loads(json.dumps(fields, default=repr))


def _check_same_run(
  saved: dict[str, Any], config: TrainConfig, workdir: pathlib.Path
) -> None:
  """Raises ValueError if the checkpoint in `workdir` is of another run."""
  current = _config_json(config)
  model = (saved.get("model"), saved.get("model_kwargs"))
  if model != (current["model"], current["model_kwargs"]):
    raise ValueError(
      f"workdir {workdir} holds a checkpoint of model {saved.get('model')!r} "
      f"(model_kwargs {saved.get('model_kwargs')}), but the config asks for "
      f"model {config.model!r} (model_kwargs {current['model_kwargs']}); "
      "use a fresh workdir, or the same model to resume."
    )
  differ = sorted(
    name
    for name in set(saved) | set(current)
    if name not in _RESUMABLE_CHANGES and saved.get(name) != current.get(name)
  )
  if differ:
    details = ", ".join(
      f"{n}: saved {saved.get(n)!r} vs now {current.get(n)!r}" for n in differ
    )
    raise ValueError(
      f"workdir {workdir} holds a checkpoint of a different run ({details}); "
      "use a fresh workdir, or the same config to resume."
    )


def _checkpoint_tree(state: TrainState) -> dict[str, Any]:
  return {
    "step": state.step,
    "params": state.params,
    "batch_stats": state.batch_stats,
    "opt_state": state.opt_state,
    "key": state.key,
  }


def checkpoint_manager(
  workdir: str | os.PathLike, max_to_keep: int = 2, *, create: bool = True
) -> ocp.CheckpointManager:
  """The orbax manager of `<workdir>/checkpoints`."""
  path = pathlib.Path(workdir).absolute() / "checkpoints"
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(path, options=options)


def load_variables(
  workdir: str | os.PathLike, step: int | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
  """The config and model variables saved in a workdir's checkpoint.

  Args:
    workdir: the workdir of a `train_and_evaluate` run.
    step: which checkpoint; None = the latest.

  Returns:
    `(config, variables)`: the run's `TrainConfig` (with `num_classes`
    resolved) and `{"params": ..., "batch_stats": ...}` ready for
    `get_model(config.model, ...).apply`.

  Raises:
    FileNotFoundError: if the workdir holds no checkpoint.
  """
  workdir = pathlib.Path(workdir).absolute()
  if not (workdir / "checkpoints").is_dir():
    raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}.")
  with checkpoint_manager(workdir, create=False) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}.")
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
      ),
    )
  saved = dict(restored.meta["config"])
  saved["model_kwargs"] = tuple(
    (k, tuple(v) if isinstance(v, list) else v)
    for k, v in saved["model_kwargs"]
  )
  saved["extra_eval_datasets"] = tuple(saved["extra_eval_datasets"])
  config = TrainConfig(**saved)
  variables = {"params": restored.state["params"]}
  if restored.state.get("batch_stats"):
    variables["batch_stats"] = restored.state["batch_stats"]
  return config, variables


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


def _load(config: TrainConfig, name: str, split: str, limit: int | None):
  images, labels = data.load_dataset(
    name, split, data_dir=config.data_dir, download=config.download
  )
  if limit is not None:
    images, labels = images[:limit], labels[:limit]
  return images, labels


def _check_finite(pending, manager, ckpt_dir) -> None:
  for step, metrics in pending:
    if not np.isfinite(metrics["loss"]):
      manager.wait_until_finished()
      raise FloatingPointError(
        f"non-finite loss {float(metrics['loss'])} at step {step}; training "
        f"stopped. The last good checkpoint (step {manager.latest_step()}) "
        f"is kept in {ckpt_dir}. Lower the learning rate or check the data."
      )


def train_and_evaluate(
  config: TrainConfig, workdir: str | os.PathLike
) -> dict[str, Any]:
  """Trains `config.model` on `config.dataset`, resuming from `workdir`.

  After every epoch the model is evaluated on the test split (and on
  `config.extra_eval_datasets`). Checkpoints every
  `config.checkpoint_every_steps` steps and at the end; if `workdir`
  already holds a checkpoint of the same config the run continues from
  it and ends exactly as an uninterrupted run would.

  Writes into `workdir`: `checkpoints/` (orbax), `metrics.jsonl` (one JSON
  record per logged step, `"kind": "step"`, and per epoch,
  `"kind": "epoch"`), `tensorboard/` (event files) and `config.json`.

  Args:
    config: the run's `TrainConfig`.
    workdir: directory for checkpoints and metrics (created if missing).

  Returns:
    The last epoch's metrics ("train_loss", "train_accuracy", "test_loss",
    "test_accuracy", and "<name>/test_loss", "<name>/test_accuracy" per
    extra data set) plus "step", "epoch", "num_params" and "history" (the
    list of per-epoch metric dicts).

  Raises:
    ValueError: for an invalid config, an unknown model or data set,
      images the model cannot take, a batch size larger than the training
      data or not divisible by the device count, or a workdir holding a
      checkpoint of a different run.
    FileNotFoundError: if a tfds data set is not prepared (see
      `equivlab.data.load_dataset`).
    FloatingPointError: if the loss becomes non-finite (the message names
      the step); the last good checkpoint stays in the workdir.
  """
  validate_config(config)
  from equivlab import models  # noqa: PLC0415 (engineer M's module)

  if config.model not in models.MODEL_NAMES:
    raise ValueError(
      f"model must be one of {models.MODEL_NAMES}, got {config.model!r}."
    )
  workdir = pathlib.Path(workdir).absolute()
  train_x, train_y = _load(config, config.dataset, "train", config.train_limit)
  test_sets = {"test": _load(config, config.dataset, "test", config.test_limit)}
  for name in config.extra_eval_datasets:
    test_sets[f"{name}/test"] = _load(config, name, "test", config.test_limit)
  if config.num_classes is None:
    config = dataclasses.replace(config, num_classes=int(train_y.max()) + 1)
  num_train = len(train_y)
  if config.batch_size > num_train:
    raise ValueError(
      f"batch_size {config.batch_size} is larger than the {num_train} "
      f"training examples of {config.dataset!r}; use batch_size <= "
      f"{num_train}."
    )
  mesh = parallel.make_mesh(config.num_devices)
  num_devices = mesh.devices.size
  if config.batch_size % num_devices:
    raise ValueError(
      f"batch_size {config.batch_size} is not divisible by the "
      f"{num_devices} devices; use a multiple of {num_devices} or set "
      "num_devices."
    )
  primary = parallel.is_primary()
  manager = checkpoint_manager(workdir, config.max_checkpoints)
  try:
    return _train_loop(
      config,
      workdir,
      manager,
      mesh,
      train=(train_x, train_y),
      test_sets=test_sets,
      primary=primary,
    )
  finally:
    manager.close()


def _train_loop(
  config: TrainConfig,
  workdir: pathlib.Path,
  manager: ocp.CheckpointManager,
  mesh: jax.sharding.Mesh,
  *,
  train: tuple[np.ndarray, np.ndarray],
  test_sets: dict[str, tuple[np.ndarray, np.ndarray]],
  primary: bool,
) -> dict[str, Any]:
  """`train_and_evaluate` after the inputs are checked and loaded."""
  from equivlab import models  # noqa: PLC0415 (engineer M's module)

  train_x, train_y = train
  num_devices = mesh.devices.size
  eval_batch = -(-config.eval_batch_size // num_devices) * num_devices
  steps_per_epoch = len(train_y) // config.batch_size
  total_steps = steps_per_epoch * config.num_epochs
  ckpt_dir = workdir / "checkpoints"
  # Check a checkpoint already there before building anything.
  latest = manager.latest_step()
  meta = None
  if latest is not None:
    meta = manager.restore(
      latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    ).meta
    if not isinstance(meta, dict) or "config" not in meta:
      raise ValueError(
        f"workdir {workdir} holds a checkpoint that was not written by "
        "equivlab.train; use a fresh workdir."
      )
    _check_same_run(meta["config"], config, workdir)

  init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = create_train_state(
    init_key, config, train_x[:2], total_steps=total_steps
  )
  _, schedule = make_optimizer(config, total_steps)
  num_params = models.count_params(state.params)
  state = parallel.replicate(state, mesh)
  history: list[dict[str, Any]] = []
  sums = {"loss": 0.0, "accuracy": 0.0, "count": 0}
  step = 0
  if meta is not None:
    target = jax.tree_util.tree_map(
      ocp.utils.to_shape_dtype_struct, _checkpoint_tree(state)
    )
    restored = manager.restore(
      latest,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
    ).state
    state = state.replace(**restored)
    step = int(jax.device_get(state.step))
    history, sums = meta["history"], meta["sums"]
    logging.info("Resuming %s from step %d.", workdir, step)
  if primary:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(
      json.dumps(_config_json(config), indent=2) + "\n"
    )
  writer = _MetricWriter(workdir, step, primary)
  if step and primary:
    writer.write({"kind": "resume", "step": step}, "events")

  def save(at_step: int) -> None:
    meta = {"config": _config_json(config), "history": history, "sums": sums}
    # A snapshot: the save is asynchronous and the loop goes on mutating.
    meta = json.loads(json.dumps(meta))
    manager.save(
      at_step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_checkpoint_tree(state)),
        meta=ocp.args.JsonSave(meta),
      ),
    )

  from tqdm.auto import tqdm  # noqa: PLC0415

  bar = tqdm(
    total=total_steps,
    initial=step,
    unit="step",
    disable=not (primary and config.progress),
    mininterval=1.0,
    desc=f"{config.model} on {config.dataset}",
  )
  pending: list[tuple[int, Any]] = []
  epoch_start = time.perf_counter()
  try:
    for epoch in range(step // steps_per_epoch, config.num_epochs):
      batches = data.iterate_batches(
        train_x,
        train_y,
        config.batch_size,
        key=data_key,
        epoch=epoch,
        last_batch="drop",
        start=step - epoch * steps_per_epoch,
      )
      for batch in batches:
        sharded = parallel.shard_batch(_local_rows(batch), mesh)
        state, metrics = train_step(state, sharded)
        step += 1
        pending.append((step, metrics))
        bar.update(1)
        end_of_epoch = step % steps_per_epoch == 0
        checkpoint_now = (
          step % config.checkpoint_every_steps == 0 or step == total_steps
        )
        if step % config.log_every_steps == 0 or checkpoint_now or end_of_epoch:
          pending = jax.device_get(pending)
          _check_finite(pending, manager, ckpt_dir)
          for at, values in pending:
            sums["loss"] += float(values["loss"])
            sums["accuracy"] += float(values["accuracy"])
            sums["count"] += 1
            if at % config.log_every_steps == 0:
              record = {"kind": "step", "step": at}
              record.update({k: float(v) for k, v in values.items()})
              record["learning_rate"] = float(schedule(at - 1))
              writer.write(record, "train")
          bar.set_postfix(loss=f"{float(pending[-1][1]['loss']):.4f}")
          pending = []
        if end_of_epoch:
          record = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": sums["loss"] / sums["count"],
            "train_accuracy": sums["accuracy"] / sums["count"],
          }
          for name, (images, labels) in test_sets.items():
            result = evaluate(
              state, images, labels, batch_size=eval_batch, mesh=mesh
            )
            record[f"{name}_loss"] = result["loss"]
            record[f"{name}_accuracy"] = result["accuracy"]
          history.append(record)
          sums = {"loss": 0.0, "accuracy": 0.0, "count": 0}
          elapsed = time.perf_counter() - epoch_start
          epoch_start = time.perf_counter()
          writer.write(
            {"kind": "epoch", **record, "epoch_seconds": elapsed}, "epoch"
          )
          logging.info(
            "epoch %d/%d: %s",
            epoch + 1,
            config.num_epochs,
            ", ".join(f"{k}={v:.4f}" for k, v in record.items()),
          )
        if checkpoint_now:
          save(step)
    manager.wait_until_finished()
  finally:
    bar.close()
    writer.close()
  final = dict(history[-1]) if history else {}
  final.update(
    {"step": step, "num_params": num_params, "history": list(history)}
  )
  return final
