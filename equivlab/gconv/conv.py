"""Lifting and group convolutions for p4 and p4m."""

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import groups
from equivlab.gconv.actions import check_group_map
from equivlab.gconv.banks import (
  check_square_kernel,
  group_filter_bank,
  lifting_filter_bank,
)
from equivlab.gconv.padding import (
  Padding,
  check_dilation,
  check_rank,
  check_stride,
  effective_kernel,
  normalize_padding,
  padding_amounts,
)
from equivlab.ops import convolution


def check_fits(x, name, side, stride, padding, dilation=1, what="kernel"):
  """Raises unless a `side` window fits the padded (H, W) of `x`.

  An output with no pixels is never what the caller meant: name the
  smallest input that gives one.
  """
  h, w = np.shape(x)[1:3]
  if min(h, w) < 1:
    raise ValueError(
      f"{name} must have at least one pixel along H and W, got shape "
      f"{np.shape(x)}."
    )
  span = effective_kernel(side, dilation)
  pads = (
    padding_amounts(h, side, stride, padding, dilation)[0],
    padding_amounts(w, side, stride, padding, dilation)[1],
  )
  need = [max(span - lo - hi, 1) for lo, hi in pads]
  if h < need[0] or w < need[1]:
    raise ValueError(
      f"{name} is {h}x{w} (shape {np.shape(x)}) but the {side}x{side} "
      f"{what} (span {span} at dilation {dilation}) with padding "
      f"{padding!r} needs an input of at least {need[0]}x{need[1]}."
    )


def _promote(x, w, name):
  """Both operands in `jnp.result_type(x, w)`, which must be floating."""
  x, w = jnp.asarray(x), jnp.asarray(w)
  dtype = jnp.result_type(x, w)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f"{name} and w must promote to a floating-point dtype to be "
      f"convolved, got {name} {x.dtype} and w {w.dtype} (promoted: "
      f"{dtype}); cast one of them, e.g. {name}.astype(jnp.float32)."
    )
  return x.astype(dtype), w.astype(dtype)


# --------------------------------------------------------------------------
# Convolutions.


def wrap_pad(x, kernel, stride, dilation=1):
  """Pads (H, W) of `[N, H, W, ...]` as "SAME" would, with wrapped pixels."""
  pads = [
    padding_amounts(n, kernel, stride, "SAME", dilation)[0]
    for n in x.shape[1:3]
  ]
  rest = ((0, 0),) * (x.ndim - 3)
  return jnp.pad(x, ((0, 0), *pads, *rest), mode="wrap")


def _conv(x, kernel, stride, padding, dilation, precision, impl):
  if padding == "CIRCULAR":
    x, padding = wrap_pad(x, kernel.shape[0], stride, dilation), "VALID"
  return convolution.conv2d(
    x,
    kernel,
    stride=(stride, stride),
    padding=padding,
    dilation=(dilation, dilation),
    precision=precision,
    impl=impl,
  )


def _prepare(x, w, name, stride, padding, dilation):
  """The checks the four convolutions share, after their rank checks."""
  x, w = _promote(x, w, name)
  if x.shape[3] != w.shape[2]:
    raise ValueError(
      f"input channels must match: {name} has Cin={x.shape[3]} (shape "
      f"{x.shape}) but w expects Cin={w.shape[2]} (shape {w.shape})."
    )
  check_square_kernel(w)
  stride, padding = check_stride(stride), normalize_padding(padding)
  dilation = check_dilation(dilation)
  check_fits(x, name, w.shape[0], stride, padding, dilation)
  return x, w, stride, padding, dilation


def _lifting(x, w, group, stride, padding, dilation, precision, impl):
  order = groups.group_order(group)
  check_rank(x, 4, "an image batch [N, H, W, Cin]", "x")
  check_rank(w, 4, "a lifting filter [kh, kw, Cin, Cout]", "w")
  x, w, stride, padding, dilation = _prepare(
    x, w, "x", stride, padding, dilation
  )
  bank = lifting_filter_bank(w, group)
  out = _conv(x, bank, stride, padding, dilation, precision, impl)
  return out.reshape(*out.shape[:3], w.shape[3], order)


def _group(f, w, group, stride, padding, dilation, precision, impl):
  order = groups.group_order(group)
  check_group_map(f, order, "f")
  check_rank(w, 5, f"a group filter [kh, kw, Cin, {order}, Cout]", "w")
  f, w, stride, padding, dilation = _prepare(
    f, w, "f", stride, padding, dilation
  )
  bank = group_filter_bank(w, group)
  x = jnp.reshape(f, (*f.shape[:3], f.shape[3] * order))
  out = _conv(x, bank, stride, padding, dilation, precision, impl)
  return out.reshape(*out.shape[:3], w.shape[4], order)


def lifting_conv(
  x: jax.Array,
  w: jax.Array,
  *,
  stride: int = 1,
  padding: Padding = "SAME",
  dilation: int = 1,
  precision=None,
  impl: str = "auto",
) -> jax.Array:
  """Lifts images to p4 maps: correlates with the 4 rotated filters.

  `out[..., o, s] = sum_c corr(x[..., c], rot90(w, s, axes=(0, 1))[:, :, c,
  o])`, so `lifting_conv(rotate_z2(x, k), w) == rotate_p4(lifting_conv(x, w),
  k)`.

  Args:
    x: images `[N, H, W, Cin]`.
    w: filters `[kh, kw, Cin, Cout]`, kh == kw.
    stride: an int (the same on both axes).
    padding: "SAME", "VALID", "CIRCULAR" (wrap around), an int or explicit
      (lo, hi) pairs.
    dilation: the kernel dilation (an int, the same on both axes).
    precision: passed to `lax.conv_general_dilated`.
    impl: "auto", "xla" or "cpu": how the convolution runs
      (`equivlab.ops.convolution`; the same values either way).

  Returns:
    p4 feature maps `[N, H', W', Cout, 4]`.

  Raises:
    ValueError: wrong ranks, channel mismatch, non-square kernel, bad stride
      padding or dilation, or a kernel that does not fit the padded input
      (the message names the smallest accepted input size).
    TypeError: if `x` and `w` do not promote to a floating-point dtype
      (mixed dtypes promote as `jnp.result_type` does).
  """
  return _lifting(x, w, "p4", stride, padding, dilation, precision, impl)


def group_conv(
  f: jax.Array,
  w: jax.Array,
  *,
  stride: int = 1,
  padding: Padding = "SAME",
  dilation: int = 1,
  precision=None,
  impl: str = "auto",
) -> jax.Array:
  """p4 group correlation of p4 maps.

  With `w_s = roll(rot90(w, s, axes=(0, 1)), s, axis=3)`,
  `out[..., o, s] = sum_{c, t} corr(f[..., c, t], w_s[:, :, c, t, o])`, so
  `group_conv(rotate_p4(f, k), w) == rotate_p4(group_conv(f, w), k)`.

  Args:
    f: p4 maps `[N, H, W, Cin, 4]`.
    w: filters `[kh, kw, Cin, 4, Cout]`; axis 3 is the input rotation t.
    stride: an int (the same on both axes).
    padding: "SAME", "VALID", "CIRCULAR" (wrap around), an int or explicit
      (lo, hi) pairs.
    dilation: the kernel dilation (an int, the same on both axes).
    precision: passed to `lax.conv_general_dilated`.
    impl: "auto", "xla" or "cpu": how the convolution runs
      (`equivlab.ops.convolution`; the same values either way).

  Returns:
    p4 feature maps `[N, H', W', Cout, 4]`.

  Raises:
    ValueError: wrong ranks, group axis not 4, channel mismatch, non-square
      kernel, bad stride, padding or dilation, or a kernel that does not fit
      the padded input (the message names the smallest accepted size).
    TypeError: if `f` and `w` do not promote to a floating-point dtype.
  """
  return _group(f, w, "p4", stride, padding, dilation, precision, impl)


def lifting_conv_p4m(
  x: jax.Array,
  w: jax.Array,
  *,
  stride: int = 1,
  padding: Padding = "SAME",
  dilation: int = 1,
  precision=None,
  impl: str = "auto",
) -> jax.Array:
  """Lifts images to p4m maps: correlates with the 8 transformed filters.

  `out[..., o, m * 4 + r] = corr(x, rot90(flip^m(w)))` summed over input
  channels, where flip mirrors the W axis of the filter. Equivariant:
  `lifting_conv_p4m(g x, w) == g lifting_conv_p4m(x, w)` for every
  roto-reflection g (`groups.act_on_image`, `groups.act_on_map`).

  Args:
    x: images `[N, H, W, Cin]`.
    w: filters `[kh, kw, Cin, Cout]`, kh == kw.
    stride: an int (the same on both axes).
    padding: "SAME", "VALID", "CIRCULAR" (wrap around), an int or explicit
      (lo, hi) pairs.
    dilation: the kernel dilation (an int, the same on both axes).
    precision: passed to `lax.conv_general_dilated`.
    impl: "auto", "xla" or "cpu": how the convolution runs
      (`equivlab.ops.convolution`; the same values either way).

  Returns:
    p4m feature maps `[N, H', W', Cout, 8]`.

  Raises:
    ValueError: as `lifting_conv`.
    TypeError: as `lifting_conv`.
  """
  return _lifting(x, w, "p4m", stride, padding, dilation, precision, impl)


def group_conv_p4m(
  f: jax.Array,
  w: jax.Array,
  *,
  stride: int = 1,
  padding: Padding = "SAME",
  dilation: int = 1,
  precision=None,
  impl: str = "auto",
) -> jax.Array:
  """p4m group correlation of p4m maps.

  `out[..., o, g] = sum_{c, h} corr(f[..., c, h], (g w)[:, :, c, h, o])`,
  where `(g w)(p, h) = w(g^-1 p, g^-1 h)` is the p4m action on the filter
  viewed as a map over (kh, kw) and its input group axis.

  Args:
    f: p4m maps `[N, H, W, Cin, 8]`.
    w: filters `[kh, kw, Cin, 8, Cout]`; axis 3 is the input group index.
    stride: an int (the same on both axes).
    padding: "SAME", "VALID", "CIRCULAR" (wrap around), an int or explicit
      (lo, hi) pairs.
    dilation: the kernel dilation (an int, the same on both axes).
    precision: passed to `lax.conv_general_dilated`.
    impl: "auto", "xla" or "cpu": how the convolution runs
      (`equivlab.ops.convolution`; the same values either way).

  Returns:
    p4m feature maps `[N, H', W', Cout, 8]`.

  Raises:
    ValueError: as `group_conv`, with a group axis of 8.
    TypeError: as `group_conv`.
  """
  return _group(f, w, "p4m", stride, padding, dilation, precision, impl)


# --------------------------------------------------------------------------
# Pooling.
