"""Weight initialisers by name: He, Glorot (Xavier), LeCun, N(0, 1), zeros.

The one registry every equivlab model and layer takes its kernels'
initialisers from. He et al., "Delving Deep into Rectifiers" (ICCV 2015):
`Var[w] = 2 / fan_in` keeps a ReLU network's pre-activation variance
constant with depth; Glorot & Bengio (AISTATS 2010): `2 / (fan_in +
fan_out)`; LeCun et al., "Efficient BackProp" (1998): `1 / fan_in`.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks

__all__ = ["ACTIVATIONS", "SCHEMES", "kernel_initializer", "weight_std"]

SCHEMES = ("he", "xavier", "lecun", "naive", "normal", "zero")
#: The activations of every study and model that picks one by name.
ACTIVATIONS = {
  "relu": jax.nn.relu,
  "tanh": jnp.tanh,
  "sigmoid": jax.nn.sigmoid,
  "linear": lambda z: z,
}
# Schemes as `jax.nn.initializers.variance_scaling` (scale, mode,
# distribution): the variance is scale / fan, as `weight_std` says; the
# truncated normal is rescaled by jax to keep that variance.
_VARIANCE_SCALING = {
  "lecun": (1.0, "fan_in", "truncated_normal"),
  "he": (2.0, "fan_in", "truncated_normal"),
  "xavier": (1.0, "fan_avg", "uniform"),
}


def weight_std(scheme: str, fan_in: int, fan_out: int) -> float:
  """The standard deviation of an initialiser's weights.

  Args:
    scheme: "he" (`sqrt(2 / fan_in)`), "xavier" (`sqrt(2 / (fan_in +
      fan_out))`), "lecun" (`sqrt(1 / fan_in)`), "naive" (1), "normal"
      (0.01) or "zero" (0).
    fan_in: the inputs per unit.
    fan_out: the outputs per unit.

  Returns:
    The standard deviation.

  Raises:
    ValueError: for an unknown scheme or non-positive fans.
  """
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}.")
  if fan_in < 1 or fan_out < 1:
    raise ValueError(
      f"fan_in and fan_out must be >= 1, got {fan_in} and {fan_out}."
    )
  return {
    "he": float(np.sqrt(2.0 / fan_in)),
    "xavier": float(np.sqrt(2.0 / (fan_in + fan_out))),
    "lecun": float(np.sqrt(1.0 / fan_in)),
    "naive": 1.0,
    "normal": 0.01,
    "zero": 0.0,
  }[scheme]


def kernel_initializer(
  scheme: str,
  *,
  in_axis: int | tuple[int, ...] = -2,
  out_axis: int | tuple[int, ...] = -1,
):
  """The initialiser of weights `[..., fan_in axes, ..., fan_out]` by name.

  The one registry of weight initialisers: every equivlab model and layer
  takes its kernels' initialiser from here, and the standard deviation of
  what it draws is `weight_std(scheme, fan_in, fan_out)`, with the fans the
  products of the sizes along `in_axis` and `out_axis` (for a conv kernel
  `[kh, kw, C_in, C_out]`, flax's default axes give `kh kw C_in`; a group
  conv kernel `[k, k, C_in, G, C_out]` counts its input group axis too).

  The values are exactly those of `jax.nn.initializers.variance_scaling`
  (and `normal`, `zeros`) for the same key, shape and dtype, under either
  threefry implementation (`jax.threefry_partitionable`). They are drawn as
  a flat vector and reshaped, which gives the same numbers (jax's random
  bits follow the row-major index) but compiles one small rank-1 program
  per kernel size: XLA:CPU compiles jax's partitionable threefry over a
  rank-4 or rank-5 kernel shape an order of magnitude more slowly, and an
  eager `Module.init` compiles every initialiser it calls.

  Args:
    scheme: one of `SCHEMES`: "lecun" (flax's default), "he" (for ReLU),
      "xavier" (Glorot uniform), "naive" (N(0, 1)), "normal" (N(0, 0.01^2))
      or "zero".
    in_axis: the fan-in axes.
    out_axis: the fan-out axes.

  Returns:
    An initialiser `(key, shape, dtype=float32) -> array`, as
    `jax.nn.initializers`; `dtype` may be a dtype, a scalar type or a name
    ("float32", "bf16", ...; see `checks.float_dtype`).

  Raises:
    ValueError: for an unknown scheme; the initialiser raises it for a
      non-float dtype or a shape without the fan axes.
  """
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}.")
  if scheme == "zero":
    return _flat_initializer(0.0, "zeros", None, in_axis, out_axis)
  if scheme in _VARIANCE_SCALING:
    scale, mode, distribution = _VARIANCE_SCALING[scheme]
    return _flat_initializer(scale, distribution, mode, in_axis, out_axis)
  return _flat_initializer(
    weight_std(scheme, 1, 1), "normal", None, in_axis, out_axis
  )


def _axes_size(shape: tuple[int, ...], axes, name: str) -> int:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  for axis in axes:
    if not -len(shape) <= axis < len(shape):
      raise ValueError(
        f"{name} {axis} is out of range for a kernel of shape {shape}."
      )
  return math.prod(shape[axis] for axis in axes)


def _fans(shape, in_axis, out_axis) -> tuple[float, float]:
  """`jax.nn.initializers`' fans: the receptive field times in/out sizes."""
  in_size = _axes_size(shape, in_axis, "in_axis")
  out_size = _axes_size(shape, out_axis, "out_axis")
  receptive = math.prod(shape) / in_size / out_size
  return in_size * receptive, out_size * receptive


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _unit_draw(key, size: int, dtype, distribution: str) -> jax.Array:
  """`size` draws of jax's unit "normal", "truncated_normal" or "uniform"."""
  if distribution == "normal":
    return jax.random.normal(key, (size,), dtype)
  if distribution == "truncated_normal":
    return jax.random.truncated_normal(key, -2, 2, (size,), dtype)
  return jax.random.uniform(key, (size,), dtype, -1)


def _scaled(unit: jax.Array, distribution: str, scale: float, dtype):
  """`unit` scaled with the arithmetic of `jax.nn.initializers`.

  `scale` is the variance for "truncated_normal" and "uniform" (as
  `variance_scaling` computes it) and the standard deviation for "normal"
  (as `normal` takes it).
  """
  if distribution == "normal":
    return unit * jnp.array(scale, dtype)
  variance = jnp.array(scale, dtype=dtype)
  if distribution == "truncated_normal":
    # The standard deviation of a standard normal truncated to (-2, 2).
    stddev = jnp.sqrt(variance) / jnp.array(0.87962566103423978, dtype)
    return unit * stddev
  return unit * jnp.sqrt(3 * variance)


def _flat_initializer(scale, distribution, mode, in_axis, out_axis):
  """An initialiser drawing `distribution` flat (see `kernel_initializer`)."""

  def init(key, shape, dtype=jnp.float32):
    shape = tuple(int(d) for d in shape)
    dtype = jax.dtypes.canonicalize_dtype(checks.float_dtype("dtype", dtype))
    if distribution == "zeros":
      return jnp.zeros(shape, dtype)
    value = scale
    if mode is not None:
      fan_in, fan_out = _fans(shape, in_axis, out_axis)
      denominator = fan_in if mode == "fan_in" else (fan_in + fan_out) / 2
      value = scale / denominator
    unit = _unit_draw(key, math.prod(shape), dtype, distribution)
    return _scaled(unit, distribution, value, dtype).reshape(shape)

  return init
