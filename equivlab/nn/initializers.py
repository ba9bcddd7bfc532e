"""Weight initialisers by name: He, Glorot (Xavier), LeCun, N(0, 1), zeros.

The one registry every equivlab model and layer takes its kernels'
initialisers from. He et al., "Delving Deep into Rectifiers" (ICCV 2015):
`Var[w] = 2 / fan_in` keeps a ReLU network's pre-activation variance
constant with depth; Glorot & Bengio (AISTATS 2010): `2 / (fan_in +
fan_out)`; LeCun et al., "Efficient BackProp" (1998): `1 / fan_in`.
"""

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ACTIVATIONS", "SCHEMES", "kernel_initializer", "weight_std"]

SCHEMES = ("he", "xavier", "lecun", "naive", "normal", "zero")
# The activations of every study and model that picks one by name.
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

  Args:
    scheme: one of `SCHEMES`: "lecun" (flax's default), "he" (for ReLU),
      "xavier" (Glorot uniform), "naive" (N(0, 1)), "normal" (N(0, 0.01^2))
      or "zero".
    in_axis: the fan-in axes.
    out_axis: the fan-out axes.

  Returns:
    A `jax.nn.initializers` initialiser `(key, shape, dtype) -> array`.

  Raises:
    ValueError: for an unknown scheme.
  """
  if scheme not in SCHEMES:
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}.")
  if scheme in _VARIANCE_SCALING:
    scale, mode, distribution = _VARIANCE_SCALING[scheme]
    return jax.nn.initializers.variance_scaling(
      scale, mode, distribution, in_axis=in_axis, out_axis=out_axis
    )
  if scheme == "zero":
    return jax.nn.initializers.zeros
  return jax.nn.initializers.normal(stddev=weight_std(scheme, 1, 1))
