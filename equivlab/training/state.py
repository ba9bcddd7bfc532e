"""The train state and how a model and its optimizer state are made.

A run's model is a module from `equivlab.nn.models` named in the config, or
any flax module of the user's own, recorded in the config as "custom" with
its import path and JSON-able attributes (`record_module`), so that
`build_model` can make it again in another process.
"""

import dataclasses
import importlib
import json
import re
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
  """The module of `config`: named by `config.model`, or its "custom" class.

  A named model is built by `equivlab.nn.models.get_model` with
  `config.model_kwargs` and `config.num_classes`; a "custom" one is
  `config.model_class` imported and called with `config.model_kwargs`.

  Raises:
    ValueError: for an unknown name or bad keyword arguments (see
      `equivlab.nn.models.get_model`), or a "custom" class that cannot be
      imported or made from the recorded attributes (pass the module as
      `model=` instead).
  """
  if config.model == "custom":
    return _build_custom(config)
  from equivlab.nn import models  # noqa: PLC0415 (models imports layers, gconv)

  return models.get_model(
    config.model,
    num_classes=config.num_classes or 10,
    **dict(config.model_kwargs),
  )


def _build_custom(config: TrainConfig) -> nn.Module:
  path = config.model_class
  advice = "; pass the module itself as model= instead."
  if path is None:
    raise ValueError(
      "model 'custom' needs model_class (the import path of its class) to "
      f"be built from the config{advice}"
    )
  cls = _import_class(path)
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ValueError(
      f"model_class {path!r} cannot be imported as a flax module class{advice}"
    )
  try:
    return cls(**dict(config.model_kwargs))
  except (TypeError, ValueError) as error:
    raise ValueError(
      f"{path} cannot be made from the recorded attributes "
      f"{dict(config.model_kwargs)}: {error}{advice}"
    ) from None


def _import_class(path: str) -> Any:
  """The object at `path` ("package.module.Outer.Name"), or None."""
  parts = path.split(".")
  for split in range(len(parts) - 1, 0, -1):  # the longest module first
    try:
      found = importlib.import_module(".".join(parts[:split]))
    except ImportError:
      continue
    for name in parts[split:]:
      found = getattr(found, name, None)
    return found
  return None


def module_fields(model: nn.Module) -> dict[str, Any]:
  """The module's dataclass attributes (those set at construction)."""
  return {
    f.name: getattr(model, f.name)
    for f in dataclasses.fields(model)
    if f.init and f.name not in ("parent", "name")
  }


def model_fingerprint(model: nn.Module) -> str:
  """The module's class and attributes, e.g. "CNN(features=(4,), ...)".

  What a resumed run compares to know it trains the same model (memory
  addresses in the reprs of function attributes left out).
  """
  attributes = ", ".join(f"{k}={v!r}" for k, v in module_fields(model).items())
  text = f"{type(model).__name__}({attributes})"
  return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _json_able(value: Any) -> bool:
  try:
    json.dumps(value, allow_nan=False)
  except (TypeError, ValueError):
    return False
  return True


def record_module(config: TrainConfig, model: nn.Module) -> TrainConfig:
  """`config` recording `model` as "custom": its class and attributes.

  Args:
    config: the run's config.
    model: the flax module the run trains.

  Returns:
    `config` with model "custom", `model_class` the module's import path
    (`type(model).__module__` and its qualified name) and `model_kwargs`
    the attributes whose values are JSON-able (others, e.g. functions,
    are left out; `model_fingerprint` names them all).
  """
  cls = type(model)
  return dataclasses.replace(
    config,
    model="custom",
    model_class=f"{cls.__module__}.{cls.__qualname__}",
    model_kwargs={
      k: v for k, v in module_fields(model).items() if _json_able(v)
    },
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


def output_shape(model: nn.Module, images: Any) -> tuple[int, ...]:
  """The shape of `model`'s output on `images` (from shapes; no compute)."""
  sample = jax.ShapeDtypeStruct(np.shape(images), jnp.float32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)

  def apply(key, x):
    return model.init_with_output(
      {"params": key, "dropout": key}, x, train=False
    )[0]

  out = jax.eval_shape(apply, key, sample)
  return tuple(getattr(out, "shape", ()))


def check_logits(
  model: nn.Module, logits: Any, images: Any, num_classes: int | None
) -> None:
  """Raises ValueError unless `logits` are `[N, num_classes]` for `images`.

  Args:
    model: the module (named in the message).
    logits: its output on `images` (an array or a `jax.ShapeDtypeStruct`).
    images: the input `[N, H, W, C]`.
    num_classes: the number of classes; None checks the rank and N only.
  """
  n = np.shape(images)[0]
  expected = f"[{n}, {num_classes if num_classes else 'num_classes'}]"
  shape = getattr(logits, "shape", None)
  dtype = getattr(logits, "dtype", None)
  fits = (
    shape is not None
    and len(shape) == 2
    and shape[0] == n
    and (num_classes is None or shape[1] == num_classes)
    and jnp.issubdtype(dtype, jnp.floating)
  )
  if not fits:
    got = (
      f"shape {tuple(shape)} ({dtype})"
      if shape is not None
      else f"a {type(logits).__name__}"
    )
    raise ValueError(
      f"model {type(model).__name__} must map images of shape "
      f"{tuple(np.shape(images))} to float logits {expected} (one score "
      f"per class), got {got}."
    )


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
      it or does not map it to logits `[N, config.num_classes]`, or a
      decaying schedule has no `total_steps`.
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
    logits, variables = model.init_with_output(
      {"params": key, "dropout": key}, x, train=False
    )
    return variables, tx.init(variables["params"]), logits

  # XLA:CPU compiles the partitionable threefry (jax's default) far more
  # slowly than the classic one for the many small initialisers of a
  # network; an initialisation runs replicated, so the partitionable form
  # buys nothing here. The parameters are a fixed function of `key`.
  with jax.threefry_partitionable(False):
    jitted = jax.jit(init)
    # The output is checked from its shape before anything runs.
    _, _, logits = jax.eval_shape(jitted, init_key, sample)
    check_logits(model, logits, sample, config.num_classes)
    variables, opt_state, _ = jitted(init_key, sample)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    opt_state=opt_state,
    key=state_key,
    loss_scale=initial_loss_scale(config),
  )
