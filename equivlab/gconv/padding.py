"""Padding, output sizes and the exactness predictor of `equivlab.gconv`."""

from collections.abc import Sequence

import numpy as np

from equivlab import checks

Padding = str | int | Sequence[int] | Sequence[Sequence[int]]

_PADDING_NAMES = ("SAME", "VALID", "CIRCULAR")


# --------------------------------------------------------------------------
# Validation helpers: every public function raises a ValueError that names
# what was expected and what came, never a raw XLA or tracer error.


def check_rank(x, rank: int, what: str, name: str) -> None:
  if np.ndim(x) != rank:
    raise ValueError(
      f"{name} must be {what} of rank {rank}, got shape {np.shape(x)} "
      f"(rank {np.ndim(x)})."
    )


def check_rotation(k) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(
      f"rotation k must be a Python or NumPy integer (a number of 90 degree "
      f"steps), got {k!r} of type {type(k).__name__}."
    )
  return int(k) % 4


def check_stride(stride, name: str = "stride") -> int:
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


def check_dilation(dilation) -> int:
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
  return check_dilation(dilation) * (int(kernel) - 1) + 1


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
  stride = check_stride(stride)
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
  """`floor((n + lo + hi - k') / s) + 1` (the H axis).

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
  stride, span = check_stride(stride), effective_kernel(kernel, dilation)
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
