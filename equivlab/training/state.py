"""The train state and how a model and its optimizer state are made."""

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from equivlab import checks
from equivlab.training import optimizers
from equivlab.training.config import TrainConfig


class TrainState(flax.struct.PyTreeNode):
  """The arrays of a supervised run that change as it trains.

  A pure pytree: the model, the optimizer and the step settings are not in
  it but closed over by the step functions (`equivlab.training.steps`), so
  one state can be checkpointed, replicated or restored as it is.

  Attributes:
    step: int32 scalar, the number of steps taken.
    params: the model's "params" collection (float32).
    batch_stats: the "batch_stats" collection ({} if the model has none).
    opt_state: the optax state.
    key: uint32 `[2]` PRNG key; step t uses `fold_in(key, t)`.
    loss_scale: the dynamic loss scale of float16 compute: {"scale":
      float32 scalar, "counter": int32 scalar, the finite steps in a row
      since the scale last changed}; {} for float32 and bfloat16.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  key: jax.Array
  loss_scale: Any = flax.struct.field(default_factory=dict)

  def variables(self) -> dict[str, Any]:
    """The model variables: {"params": ..., "batch_stats": ...}."""
    variables = {"params": self.params}
    if self.batch_stats:
      variables["batch_stats"] = self.batch_stats
    return variables


def initial_loss_scale(config: TrainConfig) -> dict[str, jax.Array]:
  """The loss-scale state a run of `config` starts from.

  Args:
    config: the run's config.

  Returns:
    {"scale": `config.loss_scale_init` as float32, "counter": int32 0} for
    `compute_dtype="float16"`; {} otherwise (no scaling).
  """
  if config.compute_dtype != "float16":
    return {}
  return {
    "scale": jnp.asarray(config.loss_scale_init, jnp.float32),
    "counter": jnp.zeros((), jnp.int32),
  }


def build_model(config: TrainConfig) -> nn.Module:
  """The module named by `config.model`, with `config.model_kwargs`.

  Raises:
    ValueError: for an unknown name or bad keyword arguments (see
      `equivlab.nn.models.get_model`), or `num_classes` unresolved.
  """
  from equivlab.nn import models  # noqa: PLC0415 (models imports layers, gconv)

  return models.get_model(
    config.model,
    num_classes=config.num_classes or 10,
    **dict(config.model_kwargs),
  )


def check_module(model: Any) -> nn.Module:
  """Raises TypeError unless `model` is a flax linen module instance."""
  if isinstance(model, type) and issubclass(model, nn.Module):
    raise TypeError(
      f"model must be a flax module instance, got the class "
      f"{model.__name__}; call it first, e.g. {model.__name__}()."
    )
  if not isinstance(model, nn.Module):
    raise TypeError(
      f"model must be a flax.linen.Module instance, got {type(model).__name__}."
    )
  return model


def create_train_state(
  key: jax.Array,
  config: TrainConfig,
  sample_input: Any,
  *,
  model: nn.Module | None = None,
  tx: optax.GradientTransformation | None = None,
  total_steps: int | None = None,
) -> TrainState:
  """Initialises a model and its optimizer state.

  The model is called as `model.init(rngs, x, train=False)` and must take
  a `train` keyword (as every equivlab model does).

  Args:
    key: PRNG key; split into the initialisation key and the state's key.
    config: the run's config (model name and kwargs when `model` is None,
      the optimizer when `tx` is None).
    sample_input: images `[N, H, W, C]` of the size the model will see.
    model: any flax linen module; None builds `config.model`.
    tx: the optimizer; None builds `config`'s (`make_optimizer`).
    total_steps: length of the run; needed by the decaying schedules when
      `tx` is None.

  Returns:
    A `TrainState` at step 0 with float32 parameters (and the first loss
    scale of float16 compute, `initial_loss_scale`).

  Raises:
    ValueError: if the input is not `[N, H, W, C]`, the model cannot take
      it, or a decaying schedule has no `total_steps`.
    TypeError: if `model` is not a flax module.
  """
  model = build_model(config) if model is None else check_module(model)
  checks.check_rank("sample_input", sample_input, 4, "images [N, H, W, C]")
  if tx is None:
    if total_steps is None and config.schedule != "constant":
      raise ValueError(
        f"schedule {config.schedule!r} needs total_steps, got None."
      )
    tx, _ = optimizers.make_optimizer(config, total_steps or 1)
  init_key, state_key = jax.random.split(key)
  sample = jnp.asarray(np.asarray(sample_input[:2]), jnp.float32)

  def init(key, x):
    variables = model.init({"params": key, "dropout": key}, x, train=False)
    return variables, tx.init(variables["params"])

  # XLA:CPU compiles the partitionable threefry (jax's default) about ten
  # times slower than the classic one (10 s against 1 s for a P4CNN's
  # initialisers); an initialisation runs replicated, so the partitionable
  # form buys nothing here. The parameters are a fixed function of `key`.
  with jax.threefry_partitionable(False):
    variables, opt_state = jax.jit(init)(init_key, sample)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    opt_state=opt_state,
    key=state_key,
    loss_scale=initial_loss_scale(config),
  )
