"""The training loss and the jitted train and eval steps.

`training_loss` is the one loss of the engine: the train step
differentiates it, and so do the probes and studies that need the
gradients a step would see.

`make_steps(model, tx, spec)` builds both once per run: the model's apply
function, the optimizer and the step settings are closed over before
`xla_options.jit` (`jax.jit` with equivlab's CPU compiler options), so a
run traces each step once and nothing is cached between runs. Randomness
inside a step (augmentation, dropout) is `fold_in(state.key, state.step)`,
so a step depends on nothing but its inputs, which is what makes resuming
exact.

Reduced precision follows Micikevicius et al., "Mixed Precision Training"
(ICLR 2018), with DeepMind's `jmp`: float32 master weights, the forward and
backward passes in `compute_dtype` (`jmp.Policy` casts), the loss and its
softmax in float32. float16 (5 exponent bits: gradients below ~6e-8
vanish) adds dynamic loss scaling (`jmp.DynamicLossScale`, its state in
`TrainState.loss_scale`, so it is checkpointed with the rest); bfloat16
keeps float32's exponent range and needs none.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import jmp
import optax

from equivlab import data
from equivlab.ops import xla_options
from equivlab.training import regularization
from equivlab.training.config import TrainConfig
from equivlab.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """The non-array settings of a step: loss, penalty, dtype, augmentation."""

  loss: str = "softmax_ce"
  l2: float = 0.0
  compute_dtype: str = "float32"
  loss_scale_period: int = 2000
  augment: str = "none"
  max_shift: int = 4
  crop_padding: int = 4
  max_angle: float = math.pi

  @classmethod
  def from_config(cls, config: TrainConfig) -> "StepSpec":
    """The step settings of a `TrainConfig`."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{name: getattr(config, name) for name in names})


class Steps(NamedTuple):
  """A run's jitted step functions.

  Attributes:
    train_step: `(state, batch) -> (state, metrics)`.
    eval_step: `(state, batch) -> metrics`.
  """

  train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
  eval_step: Callable[[TrainState, Batch], Metrics]


def augment(spec: StepSpec, key: jax.Array, images: jax.Array) -> jax.Array:
  """`images` under the spec's random augmentation (identity for "none")."""
  if spec.augment == "shift":
    return data.random_shift(key, images, spec.max_shift)
  if spec.augment == "crop_flip":
    crop_key, flip_key = jax.random.split(key)
    images = data.random_crop(crop_key, images, spec.crop_padding)
    return data.random_flip(flip_key, images)
  if spec.augment == "rotate":
    return data.random_rotate(key, images, spec.max_angle)
  return images


def example_losses(loss: str, logits: jax.Array, labels: jax.Array):
  """Per-example loss `[N]` from float32 logits `[N, K]` and labels `[N]`."""
  if loss == "mse":
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return jnp.mean(jnp.square(logits - one_hot), axis=-1)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def policy(spec: StepSpec) -> jmp.Policy:
  """float32 parameters and outputs, `spec.compute_dtype` computation."""
  return jmp.Policy(
    param_dtype=jnp.float32,
    compute_dtype=jnp.dtype(spec.compute_dtype),
    output_dtype=jnp.float32,
  )


def loss_scale(spec: StepSpec, state: TrainState) -> jmp.LossScale:
  """The step's loss scale: dynamic for float16, a no-op otherwise.

  Raises:
    ValueError: if float16 compute meets a state without a loss scale
      (one made for another `compute_dtype`).
  """
  if spec.compute_dtype != "float16":
    return jmp.NoOpLossScale()
  if set(state.loss_scale) != {"scale", "counter"}:
    raise ValueError(
      "compute_dtype 'float16' needs the state's loss scale {'scale', "
      f"'counter'}}, got {state.loss_scale!r}; create the state with a "
      "float16 config (train.create_train_state)."
    )
  return jmp.DynamicLossScale(
    loss_scale=state.loss_scale["scale"],
    counter=state.loss_scale["counter"],
    period=spec.loss_scale_period,
  )


def _skip_unless_finite(
  finite: jax.Array, new: TrainState, old: TrainState, scale: Any
) -> TrainState:
  """`new`, or `old` (one step on) if the gradients were not finite."""
  kept = jmp.select_tree(
    finite,
    (new.params, new.batch_stats, new.opt_state),
    (old.params, old.batch_stats, old.opt_state),
  )
  return new.replace(
    params=kept[0],
    batch_stats=kept[1],
    opt_state=kept[2],
    loss_scale={"scale": scale.loss_scale, "counter": scale.counter},
  )


def _global_norm(tree: Any) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in leaves))


class LossAux(NamedTuple):
  """What `training_loss` computes beside the loss.

  Attributes:
    data_loss: float32 scalar, the mean per-example loss (no penalty).
    logits: float32 `[N, K]`.
    batch_stats: the updated "batch_stats" collection ({} without one).
  """

  data_loss: jax.Array
  logits: jax.Array
  batch_stats: Any


def training_loss(
  model: nn.Module,
  params: Any,
  images: jax.Array,
  labels: jax.Array,
  *,
  batch_stats: Any = None,
  spec: StepSpec | None = None,
  dropout_key: jax.Array | None = None,
) -> tuple[jax.Array, LossAux]:
  """The loss a train step differentiates, as a function of `params`.

  The model runs as it trains (`train=True`: batch norm normalises with the
  batch's own statistics and updates them, dropout draws from
  `dropout_key`) in `spec.compute_dtype` (the parameters and images cast
  to it, the logits cast back to float32); the loss is the mean of
  `spec.loss` over the batch plus `regularization.l2_penalty(params,
  spec.l2)`. Differentiate it with `jax.grad(..., has_aux=True)`.

  Args:
    model: a flax module taking `(x, train=...)`, logits `[N, K]` out.
    params: the "params" collection (float32).
    images: `[N, H, W, C]` (already augmented).
    labels: int `[N]` in `[0, K)`.
    batch_stats: the "batch_stats" collection; None or {} for a model
      without batch norm.
    spec: the loss, penalty and compute dtype (default `StepSpec()`:
      softmax cross-entropy, no penalty, float32).
    dropout_key: the key of the "dropout" rng; None passes none (a model
      with dropout then cannot run in train mode).

  Returns:
    `(loss, aux)`: the float32 scalar loss (data loss plus penalty) and a
    `LossAux`.
  """
  spec = StepSpec() if spec is None else spec
  mixed = policy(spec)
  variables = {"params": mixed.cast_to_compute(params)}
  mutable = []
  if batch_stats:
    variables["batch_stats"] = batch_stats
    mutable = ["batch_stats"]
  rngs = {} if dropout_key is None else {"dropout": dropout_key}
  logits, updates = model.apply(
    variables,
    mixed.cast_to_compute(images),
    train=True,
    rngs=rngs,
    mutable=mutable,
  )
  logits = mixed.cast_to_output(logits)
  data_loss = jnp.mean(example_losses(spec.loss, logits, labels))
  total = data_loss
  if spec.l2:
    total = total + regularization.l2_penalty(params, spec.l2)
  return total, LossAux(data_loss, logits, updates.get("batch_stats", {}))


def train_step_fn(
  model: nn.Module, tx: optax.GradientTransformation, spec: StepSpec
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The (unjitted) train step of `model` under `tx` and `spec`.

  The step augments `batch["image"]`, differentiates `training_loss`
  (dropout from `fold_in(state.key, state.step)`, batch statistics
  updated) and applies `tx`. Metrics are scalars "loss" (data loss plus
  penalty), "data_loss", "accuracy" and "grad_norm". float16 compute
  differentiates the loss times `state.loss_scale["scale"]` and divides
  the gradients by it; a step whose gradients are not all finite leaves
  the parameters, batch statistics and optimizer state as they were and
  halves the scale (`jmp.DynamicLossScale.adjust`; never below 1), and
  `loss_scale_period` finite steps in a row double it. Its metrics add
  "loss_scale" (the scale the step used) and "skipped" (1.0 for a skipped
  step, else 0.0).
  """

  def scaled_loss(params, batch_stats, images, labels, dropout_key, scale):
    total, aux = training_loss(
      model,
      params,
      images,
      labels,
      batch_stats=batch_stats,
      spec=spec,
      dropout_key=dropout_key,
    )
    return scale.scale(total), (total, aux)

  def train_step(state: TrainState, batch: Batch):
    step_key = jax.random.fold_in(state.key, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    images = augment(spec, augment_key, batch["image"])
    labels = batch["label"]
    scale = loss_scale(spec, state)
    grad_fn = jax.grad(scaled_loss, has_aux=True)
    grads, (total, aux) = grad_fn(
      state.params, state.batch_stats, images, labels, dropout_key, scale
    )
    grads = scale.unscale(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # Keep the stored statistics' dtypes (bfloat16 compute must not change
    # the state's structure, or the step would compile again).
    batch_stats = jax.tree_util.tree_map(
      lambda new, old: new.astype(old.dtype),
      aux.batch_stats,
      state.batch_stats,
    )
    new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
    )
    metrics = {
      "loss": total,
      "data_loss": aux.data_loss,
      "accuracy": jnp.mean(jnp.argmax(aux.logits, -1) == labels),
      "grad_norm": _global_norm(grads),
    }
    if isinstance(scale, jmp.DynamicLossScale):
      finite = jmp.all_finite(grads)
      new_state = _skip_unless_finite(
        finite, new_state, state, scale.adjust(finite)
      )
      metrics["loss_scale"] = scale.loss_scale
      metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics

  return train_step


def eval_step_fn(
  model: nn.Module, spec: StepSpec
) -> Callable[[TrainState, Batch], Metrics]:
  """The (unjitted) eval step: loss and accuracy over unmasked rows.

  The batch may carry a "mask" `[N]` bool (False rows are padding and do
  not count). Metrics are scalars "loss" and "accuracy" (means over the
  unmasked rows) and "count" (the number of unmasked rows).
  """

  mixed = policy(spec)

  def eval_step(state: TrainState, batch: Batch) -> Metrics:
    variables = mixed.cast_to_compute(state.variables())
    logits = model.apply(
      variables, mixed.cast_to_compute(batch["image"]), train=False
    )
    logits = mixed.cast_to_output(logits)
    labels = batch["label"]
    mask = batch.get("mask")
    if mask is None:
      mask = jnp.ones(labels.shape, bool)
    weights = mask.astype(jnp.float32)
    count = jnp.sum(weights)
    losses = example_losses(spec.loss, logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    denominator = jnp.maximum(count, 1.0)
    return {
      "loss": jnp.sum(losses * weights) / denominator,
      "accuracy": jnp.sum(correct * weights) / denominator,
      "count": count,
    }

  return eval_step


def make_steps(
  model: nn.Module, tx: optax.GradientTransformation, spec: StepSpec
) -> Steps:
  """Both steps of a run, jitted once (see `train_step_fn`, `eval_step_fn`).

  Args:
    model: any flax linen module taking `(x, train=...)`.
    tx: the optimizer.
    spec: the step settings.

  Returns:
    `Steps(train_step, eval_step)`.
  """
  return Steps(
    train_step=xla_options.jit(train_step_fn(model, tx, spec)),
    eval_step=xla_options.jit(eval_step_fn(model, spec), inference=True),
  )
