"""Regularisation and normalisation, as pure functions (seeds 000, 004).

- Inverted dropout (Srivastava et al. 2014; seed 004 2(f)(i)): keep a unit
  with probability `1 - rate` and divide by `1 - rate`, so the expected
  activation is unchanged and evaluation needs no rescaling.
- The L2 penalty `l2 / 2 * sum w^2` over the weights (seed 004 2(f)(ii))
  against decoupled weight decay (Loshchilov & Hutter 2019): the same under
  SGD with `weight_decay = l2`, different under Adam, whose preconditioner
  also rescales the penalty's gradient.
- Ensembles average predictions, not parameters (seed 004 4(e)).
- Batch, layer, instance and group normalisation of features, NHWC maps
  and group maps (seed 000 4(c), 4(d); seed 004 4(a), 4(b)): the one
  implementation behind every normalisation layer of equivlab.
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


def _check_members(params_list: Sequence[PyTree]) -> None:
  """Raises ValueError unless there are members, all of one structure."""
  if not params_list:
    raise ValueError("params_list must hold at least one member, got none.")
  first = jax.tree.structure(params_list[0])
  shapes = [jnp.shape(x) for x in jax.tree.leaves(params_list[0])]
  for m, params in enumerate(params_list[1:], start=1):
    if jax.tree.structure(params) != first or shapes != [
      jnp.shape(x) for x in jax.tree.leaves(params)
    ]:
      raise ValueError(
        f"params_list members must share one structure and shapes; member "
        f"{m} differs from member 0 ({jax.tree.structure(params)} vs "
        f"{first})."
      )


def ensemble_predict(
  apply_fn: Callable[[PyTree, jax.Array], jax.Array],
  params_list: Sequence[PyTree],
  x: jax.Array,
) -> jax.Array:
  """`g(x) = 1/M sum_m f(x; theta_m)`: the ensemble of seed 004 4(e).

  For classifiers, let `f` return probabilities (a softmax), so that `g`
  is the mixture of the members' predictive distributions; averaging
  logits instead gives a (normalised) geometric mean, another model.

  Args:
    apply_fn: `f(params, x)`.
    params_list: the members' parameters (same structure).
    x: the inputs.

  Returns:
    The averaged predictions.

  Raises:
    ValueError: if `params_list` is empty, its members differ in
      structure, or their predictions differ in shape.
  """
  _check_members(params_list)
  preds = [apply_fn(p, x) for p in params_list]
  shapes = {jnp.shape(p) for p in preds}
  if len(shapes) != 1:
    raise ValueError(
      f"the members' predictions must share one shape, got {sorted(shapes)}."
    )
  return sum(preds) / len(preds)


def average_parameters(params_list: Sequence[PyTree]) -> PyTree:
  """`1/M sum_m theta_m`: what the seed's question wrote, NOT an ensemble.

  Networks trained from different initialisations compute similar
  functions with differently ordered hidden units (any permutation of a
  layer's units, with the next layer's inputs permuted alike, computes
  the same function), so their average mixes unrelated units. Given
  variables with "batch_stats", the running means and variances are
  averaged element-wise too; they are then not the statistics of the
  averaged network's activations.

  Args:
    params_list: parameters of the same structure.

  Returns:
    Their element-wise mean.

  Raises:
    ValueError: if `params_list` is empty or its members differ in
      structure or shapes.
  """
  _check_members(params_list)
  return jax.tree.map(lambda *ps: sum(ps) / len(ps), *params_list)


# ---------------------------------------------------------------------------
# Normalisation layers on NHWC maps.
# ---------------------------------------------------------------------------

NORM_KINDS = ("batch", "layer", "instance", "group")
_LAYOUTS = "[N, C], [N, H, W, C] or group maps [N, H, W, C, G]"


def _as_maps(x: jax.Array) -> jax.Array:
  """`x` as `[N, *space, C]`: a group map's G axis joins the space axes."""
  if jnp.ndim(x) not in (2, 4, 5):
    raise ValueError(f"x must be {_LAYOUTS}, got shape {jnp.shape(x)}.")
  return jnp.moveaxis(x, -1, 1) if jnp.ndim(x) == 5 else x


def _from_maps(stat: jax.Array, rank: int) -> jax.Array:
  return jnp.moveaxis(stat, 1, -1) if rank == 5 else stat


def norm_statistics(
  x: jax.Array, kind: str, num_groups: int = 1
) -> tuple[jax.Array, jax.Array]:
  """The mean and biased variance each normalisation divides by.

  Space is H, W for maps `[N, H, W, C]`; none for features `[N, C]`; and
  H, W and the group axis for group maps `[N, H, W, C, G]`, so statistics
  are shared over the group and the normalisation commutes with it.

  - batch: over N and space, one pair per channel (Ioffe & Szegedy 2015).
  - layer: over space and C, one pair per example (Ba et al. 2016).
  - instance: over space, per example and channel (Ulyanov et al. 2016).
  - group: over space and the channels of a group (Wu & He 2018); one
    group is layer norm and `C` groups are instance norm.

  Args:
    x: `[N, C]`, `[N, H, W, C]` or `[N, H, W, C, G]`.
    kind: one of "batch", "layer", "instance", "group".
    num_groups: for "group": divides `C`.

  Returns:
    `(mean, var)`, broadcastable against `x` (kept axes of size 1; for
    "group" each group's statistic repeated over its channels).

  Raises:
    ValueError: for another layout, an unknown kind, a group count that
      does not divide `C`, or "instance" on features (no space to pool).
  """
  maps = _as_maps(x)
  if kind not in NORM_KINDS:
    raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}.")
  space = tuple(range(1, maps.ndim - 1))
  if kind == "instance" and not space:
    raise ValueError(
      f"instance norm needs spatial axes ([N, H, W, C]), got shape {x.shape}."
    )
  if kind == "group":
    c = maps.shape[-1]
    if not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
      raise ValueError(
        f"num_groups must divide the {c} channels, got {num_groups!r}."
      )
    grouped = maps.reshape(*maps.shape[:-1], num_groups, c // num_groups)
    axes = (*space, grouped.ndim - 1)
    mean = jnp.mean(grouped, axis=axes, keepdims=True)
    var = jnp.mean((grouped - mean) ** 2, axis=axes, keepdims=True)
    size = c // num_groups
    mean, var = (jnp.repeat(v[..., 0], size, axis=-1) for v in (mean, var))
  elif kind == "batch" and x.ndim == 5:
    mean, var = (per_channel(v, 5) for v in _group_batch_moments(x))
    return mean, var
  else:
    axes = {
      "batch": (0, *space),
      "layer": (*space, maps.ndim - 1),
      "instance": space,
    }[kind]
    mean = jnp.mean(maps, axis=axes, keepdims=True)
    var = jnp.mean((maps - mean) ** 2, axis=axes, keepdims=True)
  return _from_maps(mean, x.ndim), _from_maps(var, x.ndim)


def _group_batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Batch mean and biased variance `[C]` of group maps `[N, H, W, C, G]`.

  Summed as columns of `[N * H * W, C * G]`, then over G: XLA:CPU reduces
  the leading axis of that matrix about 9x faster than axes (0, 1, 2, 4) of
  the map, and so does the gradient.
  """
  c, g = x.shape[-2:]
  flat = x.reshape(-1, c * g)
  count = flat.shape[0] * g
  mean = jnp.sum(flat, axis=0).reshape(c, g).sum(axis=-1) / count
  centered = flat - jnp.repeat(mean, g)[None, :]
  var = jnp.sum(jnp.square(centered), axis=0).reshape(c, g).sum(-1) / count
  return mean, var


def channel_affine(
  x: jax.Array,
  shift: jax.Array | None = None,
  scale: jax.Array | None = None,
  bias: jax.Array | None = None,
) -> jax.Array:
  """`(x - shift) * scale + bias` with per-channel `[C]` vectors (None: skip).

  Channels as in `per_channel`. Group maps `[N, H, W, C, G]` are handled
  as the matrix `[N * H * W, C * G]` with each vector repeated over G, so
  that the gradients of the vectors are column sums (fast on XLA:CPU; see
  `_group_batch_moments`), not sums over axes (0, 1, 2, 4). The same values
  as broadcasting `per_channel` vectors.
  """
  if x.ndim != 5:
    y = x if shift is None else x - per_channel(shift, x.ndim)
    y = y if scale is None else y * per_channel(scale, x.ndim)
    return y if bias is None else y + per_channel(bias, x.ndim)
  c, g = x.shape[-2:]
  y = x.reshape(-1, c * g)

  def columns(v):
    return jnp.repeat(jnp.reshape(v, (c,)), g)[None, :]

  y = y if shift is None else y - columns(shift)
  y = y if scale is None else y * columns(scale)
  y = y if bias is None else y + columns(bias)
  return y.reshape(x.shape)


def per_channel(v: jax.Array, rank: int) -> jax.Array:
  """A per-channel `[C]` vector shaped to broadcast against rank-`rank` x.

  The channel axis is the last of `[N, C]` and `[N, H, W, C]` and the one
  before the group axis of `[N, H, W, C, G]`.
  """
  if rank == 5:
    return v.reshape(1, 1, 1, -1, 1)
  return v.reshape((1,) * (rank - 1) + (-1,))


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
    x: `[N, C]`, `[N, H, W, C]` or `[N, H, W, C, G]`.
    kind: "batch", "layer", "instance" or "group".
    num_groups: for "group".
    scale: per-channel `[C]` (gamma), or None for 1.
    bias: per-channel `[C]` (beta), or None for 0.
    eps: added to the variance.

  Returns:
    An array shaped like `x`.

  Raises:
    ValueError: as `norm_statistics`, or for scale/bias not shaped `[C]`.
  """
  mean, var = norm_statistics(x, kind, num_groups)
  c = x.shape[-2] if x.ndim == 5 else x.shape[-1]
  for name, p in (("scale", scale), ("bias", bias)):
    if p is not None and jnp.shape(p) != (c,):
      raise ValueError(f"{name} must have shape ({c},), got {jnp.shape(p)}.")
  y = (x - mean) / jnp.sqrt(var + eps)
  if scale is not None:
    y = y * per_channel(scale, x.ndim)
  if bias is not None:
    y = y + per_channel(bias, x.ndim)
  return y
