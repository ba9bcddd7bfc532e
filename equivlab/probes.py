"""Measurements inside a network: per-layer gradient norms and shift errors.

Pure functions on pytrees and arrays, for any flax linen model:

- `layer_gradient_norms`: the L2 norm of the gradient of each layer's
  kernel (seed 004 2(c): vanishing gradients show as norms that shrink
  towards the input).
- `intermediates`: every submodule's output, in call order, through
  flax's `capture_intermediates`.
- `shift_equivariance_error`: how far a layer's output on a shifted input
  is from a shifted copy of its output on the original input (seed 002
  problem 1(3), seed 003 question 3: convolutions commute with shifts, the
  dense head does not).
"""

import re
from collections.abc import Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

_TINY = 1e-30


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
