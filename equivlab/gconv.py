"""Lifting and group convolutions for p4 and p4m, as pure functions.

Cohen & Welling, "Group Equivariant Convolutional Networks" (ICML 2016);
seed 000 part 1: `[f * psi](g) = sum_h sum_k f_k(h) psi_k(g^-1 h)`.

Conventions (DESIGN.md). Arrays are NHWC and a group feature map carries the
group axis last: `[N, H, W, C, 4]` (p4) or `[N, H, W, C, 8]` (p4m).
Convolution means cross-correlation (`lax.conv_general_dilated`). Rotation
index `s` is `s * 90` degrees in the sense of `np.rot90` on (H, W). p4m
index `m * 4 + r` is "mirror the W axis if m, then rotate by r" (see
`equivlab.groups` for the group law and the composition order).

Implementation. Each call transforms the filter bank once, with a single
gather of static indices, into a plain HWIO kernel that holds every group
element in its output channels (and, for group convolutions, the input
group axis in its input channels), then runs ONE `lax.conv_general_dilated`.
Channels are laid out as `c * G + g`, so the feature maps reshape to and
from `[N, H, W, C * G]` without a transpose.

Exactness. `lifting_conv(rotate_z2(x, k), w) == rotate_p4(lifting_conv(x, w),
k)` and the same for `group_conv` hold up to float rounding whenever
`is_exactly_equivariant(size, kernel, stride, padding)` is True: the padding
is symmetric and the strided windows tile the padded input exactly.
Translations: a stride-1 convolution commutes with integer shifts of the
input away from the borders, and with circular shifts everywhere when the
padding is "CIRCULAR" (the image is then a torus); dilation keeps both
properties, since a rotated dilated kernel is the dilated rotated kernel.

Inputs. Mixed dtypes are promoted as `jnp` promotes them
(`jnp.result_type(x, w)`: float32 with int32 gives float32, bfloat16 with
float32 gives float32); a convolution whose promoted dtype is not floating
point (int with int) is a TypeError. A kernel (or pooling window) that does
not fit the padded input is a ValueError naming the smallest accepted input
size, never an empty output. Max pooling takes integer inputs too.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from equivlab import checks, groups

Padding = str | int | Sequence[int] | Sequence[Sequence[int]]

_REDUCTIONS = ("max", "mean")
_PADDING_NAMES = ("SAME", "VALID", "CIRCULAR")


# --------------------------------------------------------------------------
# Validation helpers: every public function raises a ValueError that names
# what was expected and what came, never a raw XLA or tracer error.


def _check_rank(x, rank: int, what: str, name: str) -> None:
  if np.ndim(x) != rank:
    raise ValueError(
      f"{name} must be {what} of rank {rank}, got shape {np.shape(x)} "
      f"(rank {np.ndim(x)})."
    )


def _check_rotation(k) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(
      f"rotation k must be a Python or NumPy integer (a number of 90 degree "
      f"steps), got {k!r} of type {type(k).__name__}."
    )
  return int(k) % 4


def _check_stride(stride, name: str = "stride") -> int:
  if isinstance(stride, (tuple, list)):
    if len(stride) != 2 or stride[0] != stride[1]:
      raise ValueError(
        f"{name} must be an int or an equal pair (s, s), got {stride!r}."
      )
    stride = stride[0]
  if not checks.is_int(stride) or stride < 1:
    raise ValueError(f"{name} must be a positive integer, got {stride!r}.")
  return int(stride)


def normalize_padding(padding: Padding) -> str | tuple[tuple[int, int], ...]:
  """Canonical padding: a name or ((lo_h, hi_h), (lo_w, hi_w)).

  Args:
    padding: "SAME", "VALID" or "CIRCULAR" (any case); an int p (p on every
      side); a pair (lo, hi) for both spatial axes; or two pairs, one per
      axis. "CIRCULAR" pads as much as "SAME" but with the pixels of the
      opposite border (the image is a torus), so a stride-1 convolution
      commutes with circular shifts.

  Returns:
    "SAME", "VALID", "CIRCULAR" or a tuple of two (lo, hi) int pairs.

  Raises:
    ValueError: for an unknown name or a malformed or negative padding.
  """
  if isinstance(padding, str):
    name = padding.upper()
    if name not in _PADDING_NAMES:
      raise ValueError(
        f"padding must be one of {_PADDING_NAMES}, an int or (lo, hi) pairs, "
        f"got {padding!r}."
      )
    return name
  pairs = None
  if checks.is_int(padding):
    pairs = ((int(padding),) * 2,) * 2
  elif isinstance(padding, (tuple, list)) and len(padding) == 2:
    if all(checks.is_int(p) for p in padding):
      pairs = (tuple(int(p) for p in padding),) * 2
    elif all(
      isinstance(p, (tuple, list))
      and len(p) == 2
      and all(map(checks.is_int, p))
      for p in padding
    ):  # bools and floats are no pixel counts: never truncate them
      pairs = tuple(tuple(int(q) for q in p) for p in padding)
  if pairs is None:
    raise ValueError(
      f"padding must be 'SAME', 'VALID', 'CIRCULAR', an int, a pair (lo, hi) "
      f"or two pairs ((lo_h, hi_h), (lo_w, hi_w)), got {padding!r}."
    )
  if any(q < 0 for p in pairs for q in p):
    raise ValueError(f"padding must be non-negative, got {padding!r}.")
  return pairs


def _check_dilation(dilation) -> int:
  if isinstance(dilation, bool) or not isinstance(dilation, (int, np.integer)):
    raise ValueError(f"dilation must be a positive integer, got {dilation!r}.")
  if dilation < 1:
    raise ValueError(f"dilation must be a positive integer, got {dilation}.")
  return int(dilation)


def effective_kernel(kernel: int, dilation: int = 1) -> int:
  """The side `d * (k - 1) + 1` a k-tap kernel spans at dilation d.

  Raises:
    TypeError / ValueError: if `kernel` is not an int >= 1, or `dilation`
      not a positive integer.
  """
  checks.check_int("kernel", kernel, minimum=1)
  return _check_dilation(dilation) * (int(kernel) - 1) + 1


def padding_amounts(
  size: int, kernel: int, stride: int, padding: Padding, dilation: int = 1
) -> tuple[tuple[int, int], tuple[int, int]]:
  """The explicit (lo, hi) padding of each spatial axis, as XLA applies it.

  "SAME" (and "CIRCULAR", which pads as much) pads
  `max((ceil(n / s) - 1) * s + k' - n, 0)` in total, where
  `k' = effective_kernel(k, dilation)`, the odd pixel (if any) on the high
  side, as `lax.conv_general_dilated` does.

  Raises:
    TypeError / ValueError: if `size` or `kernel` is not an int >= 1, or
      for a bad stride, padding or dilation.
  """
  checks.check_int("size", size, minimum=1)
  stride = _check_stride(stride)
  span = effective_kernel(kernel, dilation)
  padding = normalize_padding(padding)
  if padding == "VALID":
    return ((0, 0), (0, 0))
  if padding in ("SAME", "CIRCULAR"):
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return ((total // 2, total - total // 2),) * 2
  return padding


def output_size(
  size: int, kernel: int, stride: int, padding: Padding, dilation: int = 1
) -> int:
  """`floor((n + lo + hi - k') / s) + 1` (the H axis; seed 001 has it right).

  `k' = d * (k - 1) + 1` is the span of the kernel at dilation d.
  """
  (lo, hi), _ = padding_amounts(size, kernel, stride, padding, dilation)
  return (size + lo + hi - effective_kernel(kernel, dilation)) // stride + 1


def is_exactly_equivariant(
  size: int,
  kernel: int,
  stride: int = 1,
  padding: Padding = "SAME",
  dilation: int = 1,
) -> bool:
  """Whether rot90 (and mirror) equivariance is exact for these settings.

  A 90 degree rotation reverses one spatial axis. The correlation of the
  reversed input with the reversed kernel is the reversed output exactly
  when the positions the strided windows read, from the first window's
  start to the last one's end, lie symmetrically about the input's centre
  (and the same on both axes, so that they can swap): with the same padding
  p on both sides that is `(n + 2p - k') % s == 0`, `k'` the dilated span;
  padding that no window reads does not count. Odd and even kernels alike.
  The same holds for a spatial pooling window of size `kernel`, and for
  "CIRCULAR" padding, which pads as much as "SAME" (reversing a torus is a
  symmetry of it too).

  Args:
    size: the square input's side n.
    kernel: the square kernel's side k.
    stride: the stride s.
    padding: as for `lifting_conv`.
    dilation: the kernel dilation d.

  Returns:
    True where `conv(rot90(x)) == rot90(conv(x))` up to float rounding,
    False where it fails for generic inputs.

  Raises:
    TypeError: if `size` or `kernel` is not an int (a tuple, a float).
    ValueError: if `size` or `kernel` is below 1, for a malformed padding,
      stride or dilation, or a kernel larger than the padded input.
  """
  (lo_h, hi_h), (lo_w, hi_w) = padding_amounts(
    size, kernel, stride, padding, dilation
  )
  stride, span = _check_stride(stride), effective_kernel(kernel, dilation)
  if size + lo_h + hi_h < span:
    raise ValueError(
      f"kernel {kernel} (span {span} at dilation {dilation}) is larger than "
      f"the padded input {size} + {lo_h} + {hi_h}."
    )
  windows = [
    _window_span(size, span, stride, lo, hi)
    for lo, hi in ((lo_h, hi_h), (lo_w, hi_w))
  ]
  first, last = windows[0]
  return windows[0] == windows[1] and first == size - 1 - last


def _window_span(size, span, stride, lo, hi) -> tuple[int, int]:
  """The first and last input positions the strided windows read."""
  out = (size + lo + hi - span) // stride + 1
  return -lo, (out - 1) * stride - lo + span - 1


# --------------------------------------------------------------------------
# Actions on images and group feature maps.


def rotate_z2(x: jax.Array, k: int) -> jax.Array:
  """Rotates images `[N, H, W, C]` by `k * 90` degrees: `rot90` on (1, 2)."""
  k = _check_rotation(k)
  _check_rank(x, 4, "an image batch [N, H, W, C]", "x")
  return jnp.rot90(jnp.asarray(x), k, axes=(1, 2))


def rotate_p4(f: jax.Array, k: int) -> jax.Array:
  """Rotates p4 maps `[N, H, W, C, 4]`: `roll(rot90(f, k), k, axis=-1)`."""
  k = _check_rotation(k)
  _check_group_map(f, 4, "f")
  return jnp.roll(jnp.rot90(jnp.asarray(f), k, axes=(1, 2)), k, axis=-1)


def mirror_z2(x: jax.Array) -> jax.Array:
  """Mirrors images `[N, H, W, C]` left-right (flips the W axis)."""
  _check_rank(x, 4, "an image batch [N, H, W, C]", "x")
  return jnp.flip(jnp.asarray(x), axis=2)


def rotate_p4m(f: jax.Array, k: int) -> jax.Array:
  """Rotates p4m maps `[N, H, W, C, 8]` by `k * 90` degrees.

  Each mirror half `m` of the group axis rolls by k: `(m, r) -> (m, r + k)`.
  """
  k = _check_rotation(k)
  _check_group_map(f, 8, "f")
  return groups.act_on_map(groups.Element(k, 0), jnp.asarray(f))


def mirror_p4m(f: jax.Array) -> jax.Array:
  """Mirrors p4m maps `[N, H, W, C, 8]`: flips W, `(m, r) -> (1 - m, -r)`."""
  _check_group_map(f, 8, "f")
  return groups.act_on_map(groups.Element(0, 1), jnp.asarray(f))


def _check_group_map(f, order: int, name: str) -> None:
  _check_rank(f, 5, f"a group feature map [N, H, W, C, {order}]", name)
  shape = np.shape(f)
  if shape[-1] != order:
    raise ValueError(
      f"{name} must have a group axis (last) of size {order}, got shape "
      f"{shape} with group axis {shape[-1]}."
    )


# --------------------------------------------------------------------------
# Filter-bank transforms: one static gather per call.


@functools.cache
def _bank_indices(group: str, kh: int, kw: int, gin: int) -> np.ndarray:
  """Static gather indices `[G, kh, kw, gin]` into the flat `(kh, kw, gin)`.

  Entry `[g, i, j, h]` is the flat position in `w` that lands at `(i, j, h)`
  in `g w`, where `g` acts on the spatial axes of the filter and (when
  `gin > 1`) permutes its input group axis like a feature map.
  """
  base = np.arange(kh * kw * gin).reshape(kh, kw, gin)
  banks = []
  for g in groups.elements(group):  # at trace time only: builds constants.
    moved = groups.transform_spatial(base, g, axes=(0, 1))
    if gin > 1:
      moved = moved[..., groups.group_permutation(g, gin)]
    banks.append(moved)
  return np.stack(banks).astype(np.int32)


def lifting_filter_bank(w: jax.Array, group: str = "p4") -> jax.Array:
  """All transformed copies of a lifting filter, as one HWIO kernel.

  Args:
    w: `[kh, kw, Cin, Cout]`, kh == kw.
    group: "p4" or "p4m".

  Returns:
    `[kh, kw, Cin, Cout * G]` where channel `o * G + g` holds `g w[..., o]`
    (for p4: `rot90(w, g, axes=(0, 1))`).
  """
  order = groups.group_order(group)
  _check_rank(w, 4, "a lifting filter [kh, kw, Cin, Cout]", "w")
  w = jnp.asarray(w)
  kh, kw, cin, cout = w.shape
  _check_square_kernel(w)
  idx = _bank_indices(group, kh, kw, 1).reshape(order, kh * kw)
  flat = w.reshape(kh * kw, cin, cout)
  bank = flat.at[idx.reshape(-1)].get(mode="promise_in_bounds")
  bank = bank.reshape(order, kh, kw, cin, cout)
  return jnp.transpose(bank, (1, 2, 3, 4, 0)).reshape(kh, kw, cin, -1)


def group_filter_bank(w: jax.Array, group: str = "p4") -> jax.Array:
  """All transformed copies of a group-conv filter, as one HWIO kernel.

  For p4, copy `s` is `w_s = roll(rot90(w, s, axes=(0, 1)), s, axis=3)`
  (DESIGN.md); for p4m, copy `g` is the action of `g` on `w` viewed as a
  group feature map over its (kh, kw) and input group axes.

  Args:
    w: `[kh, kw, Cin, G, Cout]`, kh == kw, G = 4 (p4) or 8 (p4m).
    group: "p4" or "p4m".

  Returns:
    `[kh, kw, Cin * G, Cout * G]`: input channel `c * G + t`, output channel
    `o * G + s` holds `w_s[:, :, c, t, o]`.
  """
  order = groups.group_order(group)
  _check_rank(w, 5, f"a group filter [kh, kw, Cin, {order}, Cout]", "w")
  w = jnp.asarray(w)
  kh, kw, cin, gin, cout = w.shape
  if gin != order:
    raise ValueError(
      f"w must have an input group axis (axis 3) of size {order} for "
      f"{group}, got shape {w.shape}."
    )
  _check_square_kernel(w)
  idx = _bank_indices(group, kh, kw, order).reshape(-1)
  flat = jnp.transpose(w, (0, 1, 3, 2, 4)).reshape(kh * kw * order, cin, cout)
  bank = flat.at[idx].get(mode="promise_in_bounds")
  bank = bank.reshape(order, kh, kw, order, cin, cout)
  # -> [kh, kw, Cin, G_in, Cout, G_out]
  bank = jnp.transpose(bank, (1, 2, 4, 3, 5, 0))
  return bank.reshape(kh, kw, cin * order, cout * order)


def _check_square_kernel(w) -> None:
  if w.shape[0] != w.shape[1] or w.shape[0] < 1:
    raise ValueError(
      f"the kernel must be square (kh == kw >= 1) to be rotated, got "
      f"{w.shape[0]}x{w.shape[1]} (w shape {w.shape})."
    )


def _check_fits(x, name, side, stride, padding, dilation=1, what="kernel"):
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


def _wrap_pad(x, kernel, stride, dilation=1):
  """Pads (H, W) of `[N, H, W, ...]` as "SAME" would, with wrapped pixels."""
  pads = [
    padding_amounts(n, kernel, stride, "SAME", dilation)[0]
    for n in x.shape[1:3]
  ]
  rest = ((0, 0),) * (x.ndim - 3)
  return jnp.pad(x, ((0, 0), *pads, *rest), mode="wrap")


def _conv(x, kernel, stride, padding, dilation, precision):
  if padding == "CIRCULAR":
    x, padding = _wrap_pad(x, kernel.shape[0], stride, dilation), "VALID"
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(stride, stride),
    padding=padding,
    rhs_dilation=(dilation, dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=precision,
  )


def _prepare(x, w, name, stride, padding, dilation):
  """The checks the four convolutions share, after their rank checks."""
  x, w = _promote(x, w, name)
  if x.shape[3] != w.shape[2]:
    raise ValueError(
      f"input channels must match: {name} has Cin={x.shape[3]} (shape "
      f"{x.shape}) but w expects Cin={w.shape[2]} (shape {w.shape})."
    )
  _check_square_kernel(w)
  stride, padding = _check_stride(stride), normalize_padding(padding)
  dilation = _check_dilation(dilation)
  _check_fits(x, name, w.shape[0], stride, padding, dilation)
  return x, w, stride, padding, dilation


def _lifting(x, w, group, stride, padding, dilation, precision):
  order = groups.group_order(group)
  _check_rank(x, 4, "an image batch [N, H, W, Cin]", "x")
  _check_rank(w, 4, "a lifting filter [kh, kw, Cin, Cout]", "w")
  x, w, stride, padding, dilation = _prepare(
    x, w, "x", stride, padding, dilation
  )
  bank = lifting_filter_bank(w, group)
  out = _conv(x, bank, stride, padding, dilation, precision)
  return out.reshape(*out.shape[:3], w.shape[3], order)


def _group(f, w, group, stride, padding, dilation, precision):
  order = groups.group_order(group)
  _check_group_map(f, order, "f")
  _check_rank(w, 5, f"a group filter [kh, kw, Cin, {order}, Cout]", "w")
  f, w, stride, padding, dilation = _prepare(
    f, w, "f", stride, padding, dilation
  )
  bank = group_filter_bank(w, group)
  x = jnp.reshape(f, (*f.shape[:3], f.shape[3] * order))
  out = _conv(x, bank, stride, padding, dilation, precision)
  return out.reshape(*out.shape[:3], w.shape[4], order)


def lifting_conv(
  x: jax.Array,
  w: jax.Array,
  *,
  stride: int = 1,
  padding: Padding = "SAME",
  dilation: int = 1,
  precision=None,
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

  Returns:
    p4 feature maps `[N, H', W', Cout, 4]`.

  Raises:
    ValueError: wrong ranks, channel mismatch, non-square kernel, bad stride
      padding or dilation, or a kernel that does not fit the padded input
      (the message names the smallest accepted input size).
    TypeError: if `x` and `w` do not promote to a floating-point dtype
      (mixed dtypes promote as `jnp.result_type` does).
  """
  return _lifting(x, w, "p4", stride, padding, dilation, precision)


def group_conv(
  f: jax.Array,
  w: jax.Array,
  *,
  stride: int = 1,
  padding: Padding = "SAME",
  dilation: int = 1,
  precision=None,
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

  Returns:
    p4 feature maps `[N, H', W', Cout, 4]`.

  Raises:
    ValueError: wrong ranks, group axis not 4, channel mismatch, non-square
      kernel, bad stride, padding or dilation, or a kernel that does not fit
      the padded input (the message names the smallest accepted size).
    TypeError: if `f` and `w` do not promote to a floating-point dtype.
  """
  return _group(f, w, "p4", stride, padding, dilation, precision)


def lifting_conv_p4m(
  x: jax.Array,
  w: jax.Array,
  *,
  stride: int = 1,
  padding: Padding = "SAME",
  dilation: int = 1,
  precision=None,
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

  Returns:
    p4m feature maps `[N, H', W', Cout, 8]`.

  Raises:
    ValueError: as `lifting_conv`.
    TypeError: as `lifting_conv`.
  """
  return _lifting(x, w, "p4m", stride, padding, dilation, precision)


def group_conv_p4m(
  f: jax.Array,
  w: jax.Array,
  *,
  stride: int = 1,
  padding: Padding = "SAME",
  dilation: int = 1,
  precision=None,
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

  Returns:
    p4m feature maps `[N, H', W', Cout, 8]`.

  Raises:
    ValueError: as `group_conv`, with a group axis of 8.
    TypeError: as `group_conv`.
  """
  return _group(f, w, "p4m", stride, padding, dilation, precision)


# --------------------------------------------------------------------------
# Pooling.


def group_pool(f: jax.Array, reduce: str = "max") -> jax.Array:
  """Pools the group axis away: `[N, H, W, C, G] -> [N, H, W, C]`.

  The result is invariant in its channels and equivariant in space: it
  rotates (and mirrors) with the input like an image.

  Raises:
    ValueError: if `f` is not of rank 5 or `reduce` is unknown.
  """
  checks.check_choice("reduce", reduce, _REDUCTIONS)
  _check_rank(f, 5, "a group feature map [N, H, W, C, G]", "f")
  f = jnp.asarray(f)
  return jnp.max(f, axis=-1) if reduce == "max" else jnp.mean(f, axis=-1)


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
  window = _check_stride(window, "window")
  strides = window if strides is None else _check_stride(strides, "strides")
  padding = normalize_padding(padding)
  _check_fits(f, "f", window, strides, padding, what="window")
  f = jnp.asarray(f)
  rest = (1,) * (f.ndim - 3)
  if padding == "CIRCULAR":
    f, padding = _wrap_pad(f, window, strides), "VALID"
  if not isinstance(padding, str):
    padding = ((0, 0), *padding, *((0, 0),) * len(rest))
  return lax.reduce_window(
    f,
    _max_identity(f.dtype),  # concrete: keeps reduce_window_max
    lax.max,
    (1, window, window, *rest),
    (1, strides, strides, *rest),
    padding,
  )


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
