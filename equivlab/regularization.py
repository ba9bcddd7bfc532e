"""Regularisation and normalisation, as pure functions (seeds 000, 004).

- Inverted dropout (Srivastava et al. 2014; seed 004 2(f)(i)): keep a unit
  with probability `1 - rate` and divide by `1 - rate`, so the expected
  activation is unchanged and evaluation needs no rescaling.
- The L2 penalty `l2 / 2 * sum w^2` over the weights (seed 004 2(f)(ii))
  against decoupled weight decay (Loshchilov & Hutter 2019): the same under
  SGD with `weight_decay = l2`, different under Adam, whose preconditioner
  also rescales the penalty's gradient.
- Ensembles average predictions, not parameters (seed 004 4(e)).
- Batch, layer, instance and group normalisation on NHWC maps (seed 000
  4(c), 4(d); seed 004 4(a), 4(b)).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def dropout(
  key: jax.Array, x: jax.Array, rate: float, *, deterministic: bool = False
) -> jax.Array:
  """Inverted dropout: `x * mask / (1 - rate)`, `mask ~ Bernoulli(1 - rate)`.

  Args:
    key: a PRNG key (unused when `deterministic`).
    x: any array.
    rate: the probability of dropping a unit, in [0, 1).
    deterministic: evaluation mode: return `x` unchanged.

  Returns:
    An array shaped like `x`.

  Raises:
    ValueError: if `rate` is outside [0, 1).
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"rate must be in [0, 1), got {rate}.")
  if deterministic or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def weight_mask(params: PyTree) -> PyTree:
  """True for weight matrices and kernels (ndim >= 2), False elsewhere.

  equivlab's one convention for what the L2 penalty and weight decay act
  on (here, in `equivlab.training` and in the experiments): weights, not
  biases or normalisation scales and shifts.
  """
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def l2_penalty(params: PyTree, l2: float) -> jax.Array:
  """`l2 / 2 * sum w^2` over the weights (`weight_mask`) of `params`.

  Seed 004 2(f)(ii)'s penalty `lambda ||theta||^2` is this with
  `l2 = 2 lambda`; the factor 1/2 makes the penalty's gradient `l2 * w`, so
  under SGD the penalty and decoupled weight decay with `weight_decay = l2`
  are the same update.
  """
  mask = jax.tree.leaves(weight_mask(params))
  leaves = [p for p, m in zip(jax.tree.leaves(params), mask, strict=True) if m]
  return 0.5 * l2 * sum(jnp.sum(jnp.square(p)) for p in leaves)


def with_l2_penalty(
  loss_fn: Callable[..., jax.Array], l2: float
) -> Callable[..., jax.Array]:
  """`loss_fn(params, *args) + l2_penalty(params, l2)`.

  Args:
    loss_fn: a scalar loss of `(params, *args)`.
    l2: the penalty coefficient, `>= 0`.

  Returns:
    The penalised loss, with the same signature.

  Raises:
    ValueError: if `l2` is negative.
  """
  if l2 < 0:
    raise ValueError(f"l2 must be >= 0, got {l2}.")

  def penalised(params, *args):
    return loss_fn(params, *args) + l2_penalty(params, l2)

  return penalised


def decoupled_weight_decay(
  optimizer: optax.GradientTransformation,
  learning_rate: float,
  weight_decay: float,
) -> optax.GradientTransformation:
  """Adds `-learning_rate * weight_decay * w` to another optimizer's step.

  The decay bypasses the optimizer's preconditioning (Loshchilov & Hutter
  2019) and acts on the weights of `weight_mask`: with `optax.adam(lr)`
  this is `optax.adamw(lr, weight_decay, mask=weight_mask)`.

  Args:
    optimizer: a complete optimizer (its updates already carry `-lr`).
    learning_rate: the step size the decay is scaled by.
    weight_decay: the decay per unit step, `>= 0`.

  Returns:
    An optax `GradientTransformation` (it needs `params` in `update`).

  Raises:
    ValueError: if `weight_decay` is negative.
  """
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
  return optax.chain(
    optimizer,
    optax.add_decayed_weights(-learning_rate * weight_decay, weight_mask),
  )


# ---------------------------------------------------------------------------
# Ensembles (seed 004 4(e)).
# ---------------------------------------------------------------------------


def ensemble_predict(
  apply_fn: Callable[[PyTree, jax.Array], jax.Array],
  params_list: Sequence[PyTree],
  x: jax.Array,
) -> jax.Array:
  """`g(x) = 1/M sum_m f(x; theta_m)`: the ensemble of seed 004 4(e).

  Args:
    apply_fn: `f(params, x)`.
    params_list: the members' parameters (same structure).
    x: the inputs.

  Returns:
    The averaged predictions.

  Raises:
    ValueError: if `params_list` is empty.
  """
  if not params_list:
    raise ValueError("params_list must hold at least one member, got none.")
  preds = [apply_fn(p, x) for p in params_list]
  return sum(preds) / len(preds)


def average_parameters(params_list: Sequence[PyTree]) -> PyTree:
  """`1/M sum_m theta_m`: what the seed's question wrote, NOT an ensemble.

  Args:
    params_list: parameters of the same structure.

  Returns:
    Their element-wise mean.

  Raises:
    ValueError: if `params_list` is empty.
  """
  if not params_list:
    raise ValueError("params_list must hold at least one member, got none.")
  return jax.tree.map(lambda *ps: sum(ps) / len(ps), *params_list)


# ---------------------------------------------------------------------------
# Normalisation layers on NHWC maps.
# ---------------------------------------------------------------------------

NORM_KINDS = ("batch", "layer", "instance", "group")


def norm_statistics(
  x: jax.Array, kind: str, num_groups: int = 1
) -> tuple[jax.Array, jax.Array]:
  """The mean and biased variance each normalisation divides by.

  - batch: over `N, H, W`, one pair per channel (Ioffe & Szegedy 2015).
  - layer: over `H, W, C`, one pair per example (Ba et al. 2016).
  - instance: over `H, W`, per example and channel (Ulyanov et al. 2016).
  - group: over `H, W` and the channels of a group (Wu & He 2018); one
    group is layer norm and `C` groups are instance norm.

  Args:
    x: `[N, H, W, C]`.
    kind: one of "batch", "layer", "instance", "group".
    num_groups: for "group": divides `C`.

  Returns:
    `(mean, var)`, broadcastable against `x`: `[1, 1, 1, C]` (batch),
    `[N, 1, 1, 1]` (layer), `[N, 1, 1, C]` (instance; and group, each
    group's statistic repeated over its channels).

  Raises:
    ValueError: for a rank other than 4, an unknown kind, or a group count
      that does not divide `C`.
  """
  if jnp.ndim(x) != 4:
    raise ValueError(f"x must be [N, H, W, C], got shape {jnp.shape(x)}.")
  if kind not in NORM_KINDS:
    raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}.")
  n, h, w, c = x.shape
  if kind == "group":
    if num_groups < 1 or c % num_groups:
      raise ValueError(
        f"num_groups must divide the {c} channels, got {num_groups}."
      )
    grouped = x.reshape(n, h, w, num_groups, c // num_groups)
    mean = jnp.mean(grouped, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean((grouped - mean) ** 2, axis=(1, 2, 4), keepdims=True)
    size = c // num_groups
    return (
      jnp.repeat(mean[..., 0], size, axis=-1),
      jnp.repeat(var[..., 0], size, axis=-1),
    )
  axes = {"batch": (0, 1, 2), "layer": (1, 2, 3), "instance": (1, 2)}[kind]
  mean = jnp.mean(x, axis=axes, keepdims=True)
  return mean, jnp.mean((x - mean) ** 2, axis=axes, keepdims=True)


def normalize(
  x: jax.Array,
  kind: str,
  *,
  num_groups: int = 1,
  scale: jax.Array | None = None,
  bias: jax.Array | None = None,
  eps: float = 1e-5,
) -> jax.Array:
  """`scale * (x - mean) / sqrt(var + eps) + bias` with `norm_statistics`.

  Args:
    x: `[N, H, W, C]`.
    kind: "batch", "layer", "instance" or "group".
    num_groups: for "group".
    scale: per-channel `[C]` (gamma), or None for 1.
    bias: per-channel `[C]` (beta), or None for 0.
    eps: added to the variance.

  Returns:
    `[N, H, W, C]`.

  Raises:
    ValueError: as `norm_statistics`, or for scale/bias not shaped `[C]`.
  """
  mean, var = norm_statistics(x, kind, num_groups)
  c = x.shape[-1]
  y = (x - mean) / jnp.sqrt(var + eps)
  for name, p in (("scale", scale), ("bias", bias)):
    if p is not None and jnp.shape(p) != (c,):
      raise ValueError(f"{name} must have shape ({c},), got {jnp.shape(p)}.")
  if scale is not None:
    y = y * scale[None, None, None, :]
  if bias is not None:
    y = y + bias[None, None, None, :]
  return y
