"""Hypothesis strategies for equivariance property tests.

Needs hypothesis (the `test` extra: `pip install "equivlab[test]"`).

    from hypothesis import given
    from equivlab.testing import strategies

    @given(strategies.conv_shapes(), strategies.group_elements("p4m"))
    def test_my_conv(shape, g): ...

Arrays are drawn as standard normal values from a drawn seed: well scaled
for float32 checks (no denormals or huge values to dominate the relative
error) and cheap to draw; hypothesis shrinks the shapes.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from equivlab import checks, gconv, groups

try:
  from hypothesis import assume
  from hypothesis import strategies as st
except ImportError as err:  # pragma: no cover (the test extra has it)
  raise ImportError(
    "equivlab.testing.strategies needs hypothesis: pip install "
    '"equivlab[test]" (or pip install hypothesis). equivlab.testing itself '
    "works without it."
  ) from err

IntLike = int | tuple[int, int] | st.SearchStrategy


class ConvShape(NamedTuple):
  """The settings of one square convolution (or pooling window).

  Unpacks into `gconv.is_exactly_equivariant(*shape)`.
  """

  size: int
  kernel: int
  stride: int
  padding: Any
  dilation: int


def _ints(value: IntLike, name: str, minimum: int) -> st.SearchStrategy:
  """An int, an inclusive (lo, hi) range or a strategy, as a strategy."""
  if isinstance(value, st.SearchStrategy):
    return value
  if checks.is_int(value):
    checks.check_int(name, value, minimum=minimum)
    return st.just(int(value))
  if isinstance(value, tuple) and len(value) == 2:
    lo, hi = value
    checks.check_int(f"{name}[0]", lo, minimum=minimum)
    checks.check_int(f"{name}[1]", hi, minimum=lo)
    return st.integers(int(lo), int(hi))
  raise TypeError(
    f"{name} must be an int, an inclusive (lo, hi) pair of ints or a "
    f"hypothesis strategy, got {value!r}."
  )


def group_elements(
  group: str = "p4", *, identity: bool = True, max_shift: int = 0
) -> st.SearchStrategy:
  """Elements of p4 or p4m, optionally with circular translations.

  Args:
    group: "p4" or "p4m".
    identity: allow the identity (with no translation) to be drawn.
    max_shift: translations `(ty, tx)` are drawn from `[-max_shift,
      max_shift]^2`; 0 for none.

  Returns:
    A strategy of `groups.Element`.
  """
  checks.check_choice("group", group, ("p4", "p4m"))
  checks.check_int("max_shift", max_shift, minimum=0)
  shift = st.integers(-max_shift, max_shift)
  elements = st.builds(
    lambda g, ty, tx: groups.Element(g.rotation, g.mirror, (ty, tx)),
    st.sampled_from(groups.elements(group)),
    shift,
    shift,
  )
  if identity:
    return elements
  return elements.filter(lambda g: g != groups.identity())


@st.composite
def _normal_arrays(draw, shape_strategy, dtype):
  shape = draw(shape_strategy)
  seed = draw(st.integers(0, 2**32 - 1))
  values = np.random.default_rng(seed).standard_normal(shape)
  return values.astype(dtype)


def images(
  *,
  batch: IntLike = (1, 2),
  size: IntLike = (3, 9),
  channels: IntLike = (1, 3),
  dtype: Any = np.float32,
) -> st.SearchStrategy:
  """Square image batches `[N, H, W, C]` (H == W) of standard normals.

  Args:
    batch, size, channels: each an int, an inclusive (lo, hi) range or a
      strategy of ints.
    dtype: a NumPy dtype (float32, float64, `jnp.bfloat16`, ...).

  Returns:
    A strategy of NumPy arrays.
  """
  shapes = st.tuples(
    _ints(batch, "batch", 1),
    _ints(size, "size", 1),
    _ints(channels, "channels", 1),
  ).map(lambda t: (t[0], t[1], t[1], t[2]))
  return _normal_arrays(shapes, np.dtype(dtype))


def group_maps(
  group: str = "p4",
  *,
  batch: IntLike = (1, 2),
  size: IntLike = (3, 9),
  channels: IntLike = (1, 3),
  dtype: Any = np.float32,
) -> st.SearchStrategy:
  """Square group feature maps `[N, H, W, C, G]`, G = 4 (p4) or 8 (p4m).

  Args:
    group: "p4" or "p4m".
    batch, size, channels, dtype: as `images`.

  Returns:
    A strategy of NumPy arrays.
  """
  order = groups.group_order(group)
  shapes = st.tuples(
    _ints(batch, "batch", 1),
    _ints(size, "size", 1),
    _ints(channels, "channels", 1),
  ).map(lambda t: (t[0], t[1], t[1], t[2], order))
  return _normal_arrays(shapes, np.dtype(dtype))


def _choices(value, name: str) -> st.SearchStrategy:
  """An int, a sequence of int choices or a strategy, as a strategy."""
  if isinstance(value, list | tuple):
    for i, v in enumerate(value):
      checks.check_int(f"{name}[{i}]", v, minimum=1)
    return st.sampled_from(list(value))
  return _ints(value, name, 1)


_PADDINGS = st.one_of(
  st.sampled_from(["SAME", "VALID", "CIRCULAR"]),
  st.integers(0, 2),
  st.tuples(st.integers(0, 2), st.integers(0, 2)),
)


def conv_shapes(
  *,
  exact: bool = True,
  sizes: IntLike = (3, 9),
  kernels: IntLike = (1, 4),
  strides: int | Sequence[int] | st.SearchStrategy = (1, 1, 2, 3),
  paddings: st.SearchStrategy = _PADDINGS,
  dilations: int | Sequence[int] | st.SearchStrategy = (1, 1, 2),
) -> st.SearchStrategy:
  """Convolution settings where `gconv.is_exactly_equivariant` is `exact`.

  With `exact=True` (the default) every drawn `ConvShape` is one on which
  a lifting or group convolution (or a spatial pooling window) commutes
  with rot90 (and mirrors) exactly; with `exact=False`, one on which it
  does not, for negative properties. The kernel always fits the padded
  input.

  Args:
    exact: the value `is_exactly_equivariant` must take.
    sizes, kernels: an int, an inclusive (lo, hi) range or a strategy.
    strides, dilations: an int, a sequence of choices (repeat a value to
      weight it; the defaults favour 1) or a strategy.
    paddings: a strategy of paddings ("SAME", "VALID", "CIRCULAR", ints,
      (lo, hi) pairs).

  Returns:
    A strategy of `ConvShape(size, kernel, stride, padding, dilation)`.
  """

  strides_st = _choices(strides, "strides")
  dilations_st = _choices(dilations, "dilations")

  @st.composite
  def draw_shape(draw):
    shape = ConvShape(
      draw(_ints(sizes, "sizes", 1)),
      draw(_ints(kernels, "kernels", 1)),
      draw(strides_st),
      draw(paddings),
      draw(dilations_st),
    )
    (lo, hi), _ = gconv.padding_amounts(*shape)
    span = gconv.effective_kernel(shape.kernel, shape.dilation)
    assume(shape.size + lo + hi >= span)
    assume(gconv.is_exactly_equivariant(*shape) == exact)
    return shape

  return draw_shape()
