"""Measurements inside a network: gradient norms, saturation, shift errors.

Pure functions on pytrees and arrays, for any flax linen model:

- `layer_gradient_norms`: the L2 norm of the gradient of each layer's
  kernel (vanishing gradients show as norms that shrink towards the
  input; Glorot & Bengio, AISTATS 2010).
- `intermediates`: every submodule's output, in call order, through
  flax's `capture_intermediates`.
- `activation_slope`, `saturated_fraction`, `mean_slope`: what an
  activation does to the backpropagated signal. A unit passes back
  `act'(z)` times what reaches it; it is saturated when `act'(z) < 0.1
  act'(0+)` (the flat tails of sigmoid and tanh, the negative side of
  ReLU).
- `pre_activations`, `loss_gradients`, `make_probe`: the same for a
  network whose hidden layers are named "layer_00", "layer_01", ...
  (optionally normalised by "bn_00", ...), as `models.DeepMLP` and
  `models.DeepCNN` are: per-layer gradient norms of the training loss,
  saturated fractions and mean slopes of every hidden layer, at one
  fixed batch, in one jitted call.
- `residual_bytes`: the memory the backward pass of the training loss
  keeps (the residuals of `jax.vjp`), from shapes alone.
- `shift_equivariance_error`: how far a layer's output on a shifted input
  is from a shifted copy of its output on the original input
  (convolutions commute with shifts, the dense head does not).
"""

import re
from collections.abc import Callable, Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from equivlab import checks
from equivlab.nn import initializers
from equivlab.ops import xla_options
from equivlab.training import steps

_TINY = 1e-30
# A unit is saturated when act'(z) < SATURATION_THRESHOLD * act'(0+).
SATURATION_THRESHOLD = 0.1
_HIDDEN = re.compile(r"layer_(\d+)")


def _natural_key(name: str) -> list[Any]:
  """Natural sort key: "Dense_10" comes after "Dense_9"."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layer_gradient_norms(
  grads: Mapping[str, Any], *, leaf: str | None = "kernel"
) -> dict[str, jax.Array]:
  """The L2 norm of each layer's gradient, by layer name.

  A layer is the module path of a parameter (its keys but the last, joined
  with "/"); its norm is the square root of the sum of squares of its
  parameters named `leaf` (or of all its parameters when `leaf` is None).
  Layers are ordered by natural sort of their names ("Dense_2" before
  "Dense_10"), which is call order for flax's automatic names.

  Args:
    grads: a gradient pytree with the structure of `variables["params"]`
      (nested mappings of arrays).
    leaf: the parameter name to measure ("kernel": weights, not biases or
      normalisation scales), or None for every parameter of the layer.

  Returns:
    Layer name -> scalar float32 norm. Works under `jax.jit`.

  Raises:
    ValueError: if `grads` is not a non-empty mapping, or no parameter is
      named `leaf`.
  """
  if not isinstance(grads, Mapping) or not grads:
    raise ValueError(
      "grads must be a non-empty mapping of parameters (variables['params'] "
      f"structure), got {type(grads).__name__}."
    )
  squares: dict[str, jax.Array] = {}
  for path, value in traverse_util.flatten_dict(dict(grads)).items():
    if leaf is not None and path[-1] != leaf:
      continue
    layer = "/".join(str(p) for p in path[:-1]) or str(path[-1])
    total = jnp.sum(jnp.square(jnp.asarray(value, jnp.float32)))
    squares[layer] = squares.get(layer, 0.0) + total
  if not squares:
    raise ValueError(f"no parameter named {leaf!r} in grads.")
  return {
    name: jnp.sqrt(squares[name]) for name in sorted(squares, key=_natural_key)
  }


def intermediates(
  model: nn.Module, variables: Mapping[str, Any], x: jax.Array, **kwargs: Any
) -> dict[str, jax.Array]:
  """The output of every submodule of `model` on `x`, in call order.

  Args:
    model: a flax linen module.
    variables: its variables.
    x: its input.
    **kwargs: more arguments of `model.apply` (e.g. `train=False`); a
      `mutable` list (e.g. ["batch_stats"]) is extended, not replaced.

  Returns:
    Submodule path ("Conv_0", "block/Dense_1", ...) -> output array; the
    model's own output is last, under "output". A submodule called more
    than once contributes "<path>#<i>" for its i-th call (i >= 1).
  """
  mutable = kwargs.pop("mutable", [])
  mutable = [mutable] if isinstance(mutable, str) else list(mutable or [])
  output, state = model.apply(
    variables,
    x,
    capture_intermediates=True,
    mutable=[*mutable, "intermediates"],
    **kwargs,
  )
  found = traverse_util.flatten_dict(dict(state["intermediates"]))
  out: dict[str, jax.Array] = {}
  for path, values in found.items():
    if path[-1] != "__call__" or len(path) == 1:
      continue
    name = "/".join(path[:-1])
    for i, value in enumerate(values):
      out[name if i == 0 else f"{name}#{i}"] = value
  out["output"] = output
  return out


def _activation_fn(activation: str) -> Callable[[jax.Array], jax.Array]:
  checks.check_choice("activation", activation, tuple(initializers.ACTIVATIONS))
  return initializers.ACTIVATIONS[activation]


def activation_slope(z: Any, activation: str) -> jax.Array:
  """The slope `act'(z)` of an activation at every entry of `z`.

  The derivative is the one jax differentiates through when the network
  trains (ReLU's is 0 at z = 0: a unit at exactly 0 passes nothing back).

  Args:
    z: pre-activations, any shape, floating point.
    activation: a name of `initializers.ACTIVATIONS` ("sigmoid",
      "tanh", "relu", "linear").

  Returns:
    float32 array of `z`'s shape.

  Raises:
    ValueError: for an unknown activation.
    TypeError: if `z` is not floating point.
  """
  act = _activation_fn(activation)
  checks.check_floating("z", z)
  z = jnp.asarray(z, jnp.float32)
  # The activations act elementwise: the JVP along ones is act'(z).
  return jax.jvp(act, (z,), (jnp.ones_like(z),))[1]


def slope_at_origin(activation: str) -> float:
  """`act'(0+)`, the slope just right of 0 (ReLU's active side: 1).

  Raises:
    ValueError: for an unknown activation.
  """
  tiny = np.full((), np.finfo(np.float32).tiny, np.float32)
  with jax.ensure_compile_time_eval():  # a constant, also inside `jit`
    return float(activation_slope(tiny, activation))


def saturated_fraction(
  z: Any, activation: str, *, threshold: float = SATURATION_THRESHOLD
) -> jax.Array:
  """Fraction of the entries of `z` where `act'(z) < threshold * act'(0+)`.

  For sigmoid (`act'(0) = 1/4`) that is `|z| > 3.64`, for tanh `|z| >
  1.82`; for ReLU the units with `z <= 0`, which pass back no gradient.

  Args:
    z: pre-activations, any shape, floating point (at least one entry).
    activation: a name of `initializers.ACTIVATIONS`.
    threshold: the fraction of the slope at 0 below which a unit counts as
      saturated, in (0, 1].

  Returns:
    A float32 scalar in [0, 1].

  Raises:
    ValueError: for an unknown activation, an empty `z` or a threshold
      outside (0, 1].
    TypeError: if `z` is not floating point.
  """
  checks.check_number(
    "threshold", threshold, minimum=0, maximum=1, strict_minimum=True
  )
  slope = activation_slope(z, activation)
  if slope.size == 0:
    raise ValueError(
      f"z must hold at least one value, got shape {np.shape(z)}."
    )
  limit = threshold * slope_at_origin(activation)
  return jnp.mean((slope < limit).astype(jnp.float32))


def mean_slope(z: Any, activation: str) -> jax.Array:
  """The mean of `act'(z)` over the entries of `z` (a float32 scalar).

  It is the factor, on average, by which the activation scales the signal
  backpropagated through a unit, besides the weights.

  Raises:
    ValueError: for an unknown activation or an empty `z`.
    TypeError: if `z` is not floating point.
  """
  slope = activation_slope(z, activation)
  if slope.size == 0:
    raise ValueError(
      f"z must hold at least one value, got shape {np.shape(z)}."
    )
  return jnp.mean(slope)


def pre_activations(
  model: nn.Module, variables: Mapping[str, Any], x: jax.Array, **kwargs: Any
) -> dict[str, jax.Array]:
  """The input of every hidden layer's activation, by layer name.

  For a network whose hidden layers are submodules named "layer_00",
  "layer_01", ... (`models.DeepMLP`, `models.DeepCNN`), the pre-activation
  of hidden layer "layer_<i>" is the output of the normalisation named
  "bn_<i>" when there is one, else the layer's own output.

  Args:
    model: the flax module.
    variables: its variables.
    x: its input.
    **kwargs: more arguments of `model.apply` (see `intermediates`), e.g.
      `train=True, mutable=["batch_stats"]`.

  Returns:
    "layer_00" -> z, ... in depth order.

  Raises:
    ValueError: if no submodule is named "layer_<digits>".
  """
  found = intermediates(model, variables, x, **kwargs)
  hidden = sorted((n for n in found if _HIDDEN.fullmatch(n)), key=_natural_key)
  if not hidden:
    raise ValueError(
      "model must name its hidden layers layer_00, layer_01, ... (as "
      f"models.DeepMLP does), got submodules {sorted(found)}."
    )
  return {
    name: found.get("bn_" + name[len("layer_") :], found[name])
    for name in hidden
  }


def loss_gradients(
  model: nn.Module,
  variables: Mapping[str, Any],
  images: jax.Array,
  labels: jax.Array,
) -> Any:
  """Gradient of the engine's training loss w.r.t. the parameters.

  The loss is `equivlab.training.training_loss` with its defaults (mean
  softmax cross-entropy, no penalty, float32): the model runs as it trains
  (`train=True`; batch norm normalises with the batch's own statistics),
  so these are the gradients an optimizer step at this batch would see
  (before any L2 penalty).

  Args:
    model: a flax module mapping images to logits `[N, K]`.
    variables: its variables ("params", maybe "batch_stats").
    images: `[N, H, W, C]`.
    labels: int `[N]` in `[0, K)`.

  Returns:
    A pytree shaped like `variables["params"]`.
  """
  grads, _ = jax.grad(steps.training_loss, argnums=1, has_aux=True)(
    model,
    variables["params"],
    images,
    labels,
    batch_stats=variables.get("batch_stats"),
  )
  return grads


def residual_bytes(
  model: nn.Module,
  variables: Mapping[str, Any],
  images: jax.Array,
  labels: jax.Array,
  *,
  compute_dtype: str = "float32",
) -> int:
  """Bytes the backward pass of the engine's training loss keeps.

  The leaves of `jax.vjp`'s backward function of
  `equivlab.training.training_loss` are the residuals of the forward pass
  (activations, masks, the compute-precision weights): what JAX asks any
  backend to hold between the forward and the backward pass.
  `jax.eval_shape` gives their sizes without running anything.

  Args:
    model: a flax module taking `(x, train=True)`.
    variables: its variables (float32 "params", maybe "batch_stats").
    images: `[N, H, W, C]`.
    labels: int `[N]`.
    compute_dtype: the precision of the forward and backward passes
      ("float32", "bfloat16" or "float16").

  Returns:
    The total size of the residuals in bytes.
  """
  spec = steps.StepSpec(compute_dtype=compute_dtype)

  def residuals(params):
    def loss(params):
      return steps.training_loss(
        model,
        params,
        images,
        labels,
        batch_stats=variables.get("batch_stats"),
        spec=spec,
        dropout_key=jax.random.key(0),
      )[0]

    return jax.tree_util.tree_leaves(jax.vjp(loss, params)[1])

  shapes = jax.eval_shape(residuals, variables["params"])
  return int(sum(s.size * np.dtype(s.dtype).itemsize for s in shapes))


def make_probe(
  model: nn.Module,
  activation: str | None = None,
  *,
  threshold: float = SATURATION_THRESHOLD,
) -> Callable[..., dict[str, dict[str, jax.Array]]]:
  """A jitted probe of a model's variables at one batch.

  The model's hidden layers must be named "layer_00", ... (with optional
  "bn_00", ...), as in `models.DeepMLP` and `models.DeepCNN`.

  Args:
    model: the flax module.
    activation: the name of its hidden activation; None reads
      `model.activation`.
    threshold: see `saturated_fraction`.

  Returns:
    `probe(variables, images, labels)`, returning a dict: "grad_norms"
    (layer -> `||dL/dW||` of every kernel, the output layer's included,
    by `layer_gradient_norms` of `loss_gradients`), "saturation" (hidden
    layer -> saturated fraction) and "mean_slope" (hidden layer -> mean
    `act'(z)`), the values float32 scalars; pre-activations as
    `pre_activations` reads them in training mode.

  Raises:
    ValueError: for an unknown activation, or none given and the model
      has no `activation` attribute.
  """
  if activation is None:
    activation = getattr(model, "activation", None)
    if activation is None:
      raise ValueError(
        f"activation must be given for {type(model).__name__}, which has "
        "no activation attribute; got None."
      )
  _activation_fn(activation)
  checks.check_number(
    "threshold", threshold, minimum=0, maximum=1, strict_minimum=True
  )

  def probe(variables, images, labels):
    grads = loss_gradients(model, variables, images, labels)
    zs = pre_activations(
      model, variables, images, train=True, mutable=["batch_stats"]
    )
    return {
      "grad_norms": layer_gradient_norms(grads),
      "saturation": {
        name: saturated_fraction(z, activation, threshold=threshold)
        for name, z in zs.items()
      },
      "mean_slope": {name: mean_slope(z, activation) for name, z in zs.items()},
    }

  return xla_options.jit(probe)


def _relative(a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
  return jnp.linalg.norm((a - b).ravel()) / jnp.maximum(scale, _TINY)


def shift_equivariance_error(
  f_x: jax.Array,
  f_shifted: jax.Array,
  output_shift: tuple[int, int] | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Relative distance between `f(shift x)` and the best shift of `f(x)`.

  For feature maps `[N, H, W, C]` the error is
  `min_t ||f(shift x) - roll(f(x), t)|| / ||f(x)||` over all circular
  shifts `t = (ty, tx)` of the map (or only `t = output_shift` when given);
  it is 0 exactly when the layer is shift-equivariant, and stays > 0 when
  no shift of the output matches (e.g. an odd input shift after a stride-2
  pool, or zero padding at the border). For vectors `[N, D]` (dense layers,
  logits) no shift acts on the output, so the error is the invariance
  error `||f(shift x) - f(x)|| / ||f(x)||` and `t` is reported as (0, 0).
  Norms are over the whole batch. The best `t` is found with an FFT
  cross-correlation and the error at it is then computed directly, so an
  exactly equivariant layer scores at float rounding, not FFT rounding.

  Args:
    f_x: the layer's output on x, `[N, H, W, C]` or `[N, D]`.
    f_shifted: its output on the shifted x, the same shape.
    output_shift: `(ty, tx)` to compare with, or None for the best one.

  Returns:
    `(error, t)`: a float32 scalar and int32 `[2]`.

  Raises:
    ValueError: if the shapes differ or are not rank 2 or 4.
  """
  f_x = jnp.asarray(f_x, jnp.float32)
  f_shifted = jnp.asarray(f_shifted, jnp.float32)
  if f_x.shape != f_shifted.shape or f_x.ndim not in (2, 4):
    raise ValueError(
      "f_x and f_shifted must have one shape, [N, H, W, C] or [N, D]; got "
      f"{f_x.shape} and {f_shifted.shape}."
    )
  scale = jnp.linalg.norm(f_x.ravel())
  if f_x.ndim == 2:
    return _relative(f_shifted, f_x, scale), jnp.zeros(2, jnp.int32)
  if output_shift is None:
    h, w = f_x.shape[1:3]
    # corr[t] = <f_shifted, roll(f_x, t)>, summed over N and C.
    spectrum = jnp.fft.rfft2(f_shifted, axes=(1, 2)) * jnp.conj(
      jnp.fft.rfft2(f_x, axes=(1, 2))
    )
    corr = jnp.fft.irfft2(jnp.sum(spectrum, axis=(0, 3)), s=(h, w))
    flat = jnp.argmax(corr)
    t = jnp.stack([flat // w, flat % w]).astype(jnp.int32)
  else:
    t = jnp.asarray(output_shift, jnp.int32)
  chex.assert_shape(t, (2,))
  rolled = jnp.roll(f_x, (t[0], t[1]), axis=(1, 2))
  return _relative(f_shifted, rolled, scale), t
