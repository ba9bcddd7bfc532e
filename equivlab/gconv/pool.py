"""Pooling over the group axis and over space."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from equivlab import checks
from equivlab.gconv.conv import check_fits, wrap_pad
from equivlab.gconv.padding import (
  Padding,
  check_rank,
  check_stride,
  normalize_padding,
)

_REDUCTIONS = ("max", "mean")


def group_pool(f: jax.Array, reduce: str = "max") -> jax.Array:
  """Pools the group axis away: `[N, H, W, C, G] -> [N, H, W, C]`.

  The result is invariant in its channels and equivariant in space: it
  rotates (and mirrors) with the input like an image.

  Raises:
    ValueError: if `f` is not of rank 5 or `reduce` is unknown.
  """
  checks.check_choice("reduce", reduce, _REDUCTIONS)
  check_rank(f, 5, "a group feature map [N, H, W, C, G]", "f")
  f = jnp.asarray(f)
  if reduce == "mean":
    return jnp.mean(f, axis=-1)
  if not jnp.issubdtype(f.dtype, jnp.floating):
    return jnp.max(f, axis=-1)
  return _group_max(f)


def _slices(f: jax.Array) -> list[jax.Array]:
  return [f[..., g] for g in range(f.shape[-1])]


@jax.custom_jvp
def _group_max(f: jax.Array) -> jax.Array:
  """`jnp.max(f, axis=-1)` over a short group axis, as G - 1 `maximum`s.

  The same values and the same derivative as `jnp.max` (the tangent of the
  maximum, shared equally among tied entries), written with elementwise
  operations only: XLA:CPU reduces and re-broadcasts a minor axis of 4 or
  8 in `jnp.max`'s gradient far more slowly than it fuses these.
  """
  top, *rest = _slices(f)
  for part in rest:
    top = jnp.maximum(top, part)
  return top


@_group_max.defjvp
def _group_max_jvp(primals, tangents):
  (f,), (tangent,) = primals, tangents
  top = _group_max(f)
  hits = [part == top for part in _slices(f)]
  count = sum(hit.astype(f.dtype) for hit in hits)
  shared = sum(
    jnp.where(hit, t, jnp.zeros((), t.dtype))
    for hit, t in zip(hits, _slices(tangent), strict=True)
  )
  return top, shared / count


def spatial_max_pool(
  f: jax.Array,
  window: int,
  strides: int | None = None,
  padding: Padding = "VALID",
) -> jax.Array:
  """Max pooling over (H, W) of group maps `[N, H, W, C, G]` (or images).

  Equivariant exactly where `is_exactly_equivariant(H, window, strides,
  padding)` holds: e.g. a 2x2 window with stride 2 on an even size.

  Args:
    f: `[N, H, W, C, G]` group maps or `[N, H, W, C]` images, of a float,
      int or bool dtype (the result keeps it).
    window: the square window's side.
    strides: the stride; `window` if None.
    padding: "SAME", "VALID", "CIRCULAR", an int or explicit (lo, hi)
      pairs.

  Windows that tile the input ("VALID", stride == window) are a reshape and
  a max, which XLA:CPU differentiates several times faster than
  `reduce_window` (whose gradient it expands with index arrays), with the
  same values and the same gradient (a tie sends it to the first maximum).
  Other settings use `lax.reduce_window`.

  Returns:
    The pooled array, same rank as `f`.

  Raises:
    ValueError: wrong rank, bad window, stride or padding, or a window that
      does not fit the padded input (naming the smallest accepted size).
    TypeError: for a complex (or other non-real) dtype.
  """
  if np.ndim(f) not in (4, 5):
    raise ValueError(
      f"f must be a group feature map [N, H, W, C, G] (rank 5) or images "
      f"[N, H, W, C] (rank 4), got shape {np.shape(f)}."
    )
  window = check_stride(window, "window")
  strides = window if strides is None else check_stride(strides, "strides")
  padding = normalize_padding(padding)
  check_fits(f, "f", window, strides, padding, what="window")
  f = jnp.asarray(f)
  rest = (1,) * (f.ndim - 3)
  identity = _max_identity(f.dtype)  # also the TypeError for other dtypes
  if padding == "CIRCULAR":
    f, padding = wrap_pad(f, window, strides), "VALID"
  if padding == "VALID" and strides == window:
    return _tiled_max(f, window)
  if not isinstance(padding, str):
    padding = ((0, 0), *padding, *((0, 0),) * len(rest))
  return lax.reduce_window(
    f,
    identity,  # concrete: keeps reduce_window_max
    lax.max,
    (1, window, window, *rest),
    (1, strides, strides, *rest),
    padding,
  )


def _tiled_max(f: jax.Array, window: int) -> jax.Array:
  """VALID max pooling with stride == window, as a reshape and a max."""
  n, h, w = f.shape[:3]
  out_h, out_w = h // window, w // window
  f = f[:, : out_h * window, : out_w * window]
  f = f.reshape(n, out_h, window, out_w, window, *f.shape[3:])
  f = jnp.moveaxis(f, (2, 4), (-2, -1))
  f = f.reshape(*f.shape[:-2], window * window)  # row-major window order
  if not jnp.issubdtype(f.dtype, jnp.floating):
    return jnp.max(f, axis=-1)
  return _first_max(f)


@jax.custom_jvp
def _first_max(windows: jax.Array) -> jax.Array:
  """`max` over the last axis whose derivative follows the first maximum.

  As `lax.reduce_window`'s gradient does (a tie sends the whole gradient
  to the first of the tied entries in row-major order), so that the two
  poolings agree in value and in gradient.
  """
  return jnp.max(windows, axis=-1)


@_first_max.defjvp
def _first_max_jvp(primals, tangents):
  (windows,), (tangent,) = primals, tangents
  top = jnp.max(windows, axis=-1)
  hit = windows == top[..., None]
  first = hit & (jnp.cumsum(hit, axis=-1) == 1)
  return top, jnp.sum(jnp.where(first, tangent, 0), axis=-1)


def _max_identity(dtype) -> np.ndarray:
  """The smallest value of `dtype`: the start of a running maximum."""
  if jnp.issubdtype(dtype, jnp.floating):
    return np.array(-np.inf, dtype=dtype)
  if jnp.issubdtype(dtype, jnp.integer):
    return np.array(np.iinfo(dtype).min, dtype=dtype)
  if dtype == np.bool_:
    return np.array(False)
  raise TypeError(
    f"f must have a real (float, int or bool) dtype, got {dtype}."
  )
