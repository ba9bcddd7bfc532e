"""Batch, layer, instance and group normalisation as pure functions.

The one implementation behind every normalisation layer of equivlab, for
features `[N, C]`, NHWC maps `[N, H, W, C]` and group maps
`[N, H, W, C, G]`, whose statistics are shared over the group axis so that
normalisation commutes with the group action. Ioffe & Szegedy (ICML 2015);
Ba, Kiros & Hinton (2016); Ulyanov, Vedaldi & Lempitsky (2016); Wu & He
(ECCV 2018).
"""

import jax
import jax.numpy as jnp

__all__ = [
  "NORM_KINDS",
  "channel_affine",
  "norm_statistics",
  "normalize",
  "per_channel",
]

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
  the leading axis of that matrix much faster than axes (0, 1, 2, 4) of the
  map, and so does the gradient.
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
