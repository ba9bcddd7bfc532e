"""Numerical proofs that the p4/p4m convolutions are equivariant.

Cohen & Welling (ICML 2016): `[[L_u f] * w](g) = [L_u [f * w]](g)`. Each
test states an equivariance `op(g x) == g op(x)` with fixed keys through
`equivlab.testing` (the same checks users run on their own models) and an
explicit tolerance: a relative error (max |difference| / max |expected|) of
at most 1e-5 in float32, which sums in a different order after a rotation,
and 0 (bitwise) where nothing is summed or only moved.
"""

import functools

import chex
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import strategies as st

from equivlab import gconv, groups, testing
from equivlab.testing import strategies

_DN = ("NHWC", "HWIO", "NHWC")
_RTOL = 1e-5


def _normal(seed, shape, dtype=np.float32):
  # NumPy inputs, and group actions applied in NumPy on the host: the tests
  # compile only the functions under test.
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _filters(seed, shape, dtype=np.float32):
  fan_in = int(np.prod(shape[:-1]))
  return _normal(seed, shape, dtype) / np.sqrt(fan_in).astype(dtype)


class RotationEquivarianceTest(chex.TestCase):
  """Exact rot90 (and mirror) equivariance, odd and even sizes, jit or not."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("odd", 7), ("even", 8))
  def test_lifting_conv(self, size):
    x, w = _normal(0, (2, size, size, 3)), _filters(1, (3, 3, 3, 5))
    conv = self.variant(gconv.lifting_conv)
    self.assertEqual(conv(x, w).shape, (2, size, size, 5, 4))
    errors = testing.assert_equivariant(lambda a: conv(a, w), x, rtol=_RTOL)
    self.assertEqual(list(errors), ["rot 90", "rot 180", "rot 270"])

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("odd", 7), ("even", 8))
  def test_group_conv(self, size):
    f, w = _normal(2, (2, size, size, 3, 4)), _filters(3, (3, 3, 3, 4, 5))
    conv = self.variant(gconv.group_conv)
    self.assertEqual(conv(f, w).shape, (2, size, size, 5, 4))
    testing.assert_equivariant(
      lambda a: conv(a, w), f, input="p4", output="p4", rtol=_RTOL
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("odd", 7), ("even", 8))
  def test_lifting_conv_p4m(self, size):
    x, w = _normal(4, (2, size, size, 3)), _filters(5, (3, 3, 3, 5))
    conv = self.variant(gconv.lifting_conv_p4m)
    self.assertEqual(conv(x, w).shape, (2, size, size, 5, 8))
    errors = testing.assert_equivariant(
      lambda a: conv(a, w), x, group="p4m", output="p4m", rtol=_RTOL
    )
    self.assertLen(errors, 7)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("odd", 7), ("even", 8))
  def test_group_conv_p4m(self, size):
    f, w = _normal(6, (2, size, size, 3, 8)), _filters(7, (3, 3, 3, 8, 5))
    conv = self.variant(gconv.group_conv_p4m)
    testing.assert_equivariant(
      lambda a: conv(a, w),
      f,
      group="p4m",
      input="p4m",
      output="p4m",
      rtol=_RTOL,
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("odd", 7), ("even", 8))
  def test_group_pool_is_invariant_in_channels(self, size):
    f = _normal(8, (2, size, size, 3, 8))
    for reduce in ("max", "mean"):
      pool = self.variant(functools.partial(gconv.group_pool, reduce=reduce))
      self.assertEqual(pool(f).shape, (2, size, size, 3))
      testing.assert_equivariant(
        pool, f, group="p4m", input="p4m", output="image", rtol=_RTOL
      )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("window2", 8, 2), ("window3", 9, 3))
  def test_spatial_max_pool(self, size, window):
    f = _normal(9, (2, size, size, 3, 8))
    pool = self.variant(
      functools.partial(gconv.spatial_max_pool, window=window)
    )
    self.assertEqual(pool(f).shape, (2, size // window, size // window, 3, 8))
    # A maximum moves values without summing them: bitwise.
    testing.assert_equivariant(
      pool, f, group="p4m", input="p4m", output="p4m", rtol=0.0
    )

  def test_strided_and_even_kernel_where_predicted(self):
    # Stride 2 on an odd size with SAME; an even kernel with VALID padding.
    cases = [(9, 3, 2, "SAME"), (8, 4, 1, "VALID"), (8, 2, 2, ((1, 1),) * 2)]
    for size, kernel, stride, padding in cases:
      self.assertTrue(
        gconv.is_exactly_equivariant(size, kernel, stride, padding)
      )
      f = _normal(10, (1, size, size, 2, 4))
      w = _filters(11, (kernel, kernel, 2, 4, 3))
      conv = functools.partial(
        gconv.group_conv, w=w, stride=stride, padding=padding
      )
      testing.assert_equivariant(conv, f, input="p4", output="p4", rtol=_RTOL)


def test_rotate_p4_matches_design_and_groups():
  f = _normal(12, (1, 5, 5, 2, 4))
  for k in range(4):
    expected = np.roll(np.rot90(f, k, axes=(1, 2)), k, axis=-1)
    np.testing.assert_array_equal(gconv.rotate_p4(f, k), expected)
    np.testing.assert_array_equal(
      groups.act_on_map(groups.Element(k), f), expected
    )
  np.testing.assert_array_equal(gconv.rotate_p4(f, 5), gconv.rotate_p4(f, 1))
  np.testing.assert_array_equal(gconv.rotate_p4(f, -1), gconv.rotate_p4(f, 3))


def test_p4m_actions_match_groups():
  x, f = _normal(13, (1, 5, 5, 2)), _normal(14, (1, 5, 5, 2, 8))
  np.testing.assert_array_equal(
    gconv.mirror_z2(x), groups.act_on_image(groups.Element(0, 1), x)
  )
  np.testing.assert_array_equal(
    gconv.mirror_p4m(f), groups.act_on_map(groups.Element(0, 1), f)
  )
  np.testing.assert_array_equal(
    gconv.rotate_p4m(f, 3), groups.act_on_map(groups.Element(3), f)
  )


def test_filter_banks_follow_the_design_formulas():
  w = _normal(15, (3, 3, 2, 4, 5))
  bank = gconv.group_filter_bank(w, "p4").reshape(3, 3, 2, 4, 5, 4)
  for s in range(4):
    expected = np.roll(np.rot90(w, s, axes=(0, 1)), s, axis=3)
    np.testing.assert_array_equal(bank[..., s], expected)
  w0 = w[:, :, :, 0, :]
  lift = gconv.lifting_filter_bank(w0, "p4m").reshape(3, 3, 2, 5, 8)
  for i, g in enumerate(groups.elements("p4m")):
    # g acts on (kh, kw) like on an image's (H, W): mirror, then rotate.
    moved = np.flip(w0, axis=1) if g.mirror else w0
    np.testing.assert_array_equal(
      lift[..., i], np.rot90(moved, g.rotation, axes=(0, 1))
    )


@pytest.mark.parametrize(
  "fn, args",
  [
    (gconv.lifting_conv, ((2, 6, 6, 3), (3, 3, 3, 4))),
    (gconv.group_conv, ((2, 6, 6, 3, 4), (3, 3, 3, 4, 4))),
    (gconv.lifting_conv_p4m, ((2, 6, 6, 3), (3, 3, 3, 4))),
    (gconv.group_conv_p4m, ((2, 6, 6, 3, 8), (3, 3, 3, 8, 4))),
  ],
)
def test_one_conv_and_one_gather_per_call(fn, args):
  """The whole group rides in the channels: no loop over group elements."""
  shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in args]
  jaxpr = jax.make_jaxpr(fn)(*shapes)

  def count(eqns, name):
    total = 0
    for eqn in eqns:
      total += eqn.primitive.name == name
      for param in eqn.params.values():
        sub = getattr(param, "jaxpr", param)  # ClosedJaxpr or Jaxpr
        if hasattr(sub, "eqns"):
          total += count(sub.eqns, name)
    return total

  assert count(jaxpr.jaxpr.eqns, "conv_general_dilated") == 1
  assert count(jaxpr.jaxpr.eqns, "gather") == 1


# --------------------------------------------------------------------------
# Translations.


_SHIFTS = [(1, 0), (2, -3), (-4, 7)]


def test_translation_equivariance_is_bitwise_with_circular_padding():
  x, f = _normal(16, (2, 10, 10, 3)), _normal(17, (2, 10, 10, 3, 8))
  wl, wg = _filters(18, (3, 3, 3, 4)), _filters(19, (3, 3, 3, 8, 4))

  def wrap(a):
    pad = ((0, 0), (1, 1), (1, 1)) + ((0, 0),) * (a.ndim - 3)
    return jnp.pad(a, pad, mode="wrap")

  lift = jax.jit(lambda a: gconv.lifting_conv(wrap(a), wl, padding="VALID"))
  conv = jax.jit(lambda a: gconv.group_conv_p4m(wrap(a), wg, padding="VALID"))
  shifts = dict(elements=(), shifts=_SHIFTS, rtol=0.0)
  errors = testing.assert_equivariant(lift, x, **shifts)
  assert list(errors) == ["shift (1, 0)", "shift (2, -3)", "shift (-4, 7)"]
  testing.assert_equivariant(
    conv, f, group="p4m", input="p4m", output="p4m", **shifts
  )


def test_circular_padding_commutes_with_circular_shifts_bitwise():
  x, f = _normal(24, (2, 10, 10, 3)), _normal(25, (2, 10, 10, 3, 8))
  wl, wg = _filters(26, (3, 3, 3, 4)), _filters(27, (3, 3, 3, 8, 4))
  shifts = dict(elements=(), shifts=_SHIFTS, rtol=0.0)
  for dilation in (1, 2, 4):
    opts = dict(padding="CIRCULAR", dilation=dilation)
    lift = jax.jit(functools.partial(gconv.lifting_conv, w=wl, **opts))
    conv = jax.jit(functools.partial(gconv.group_conv_p4m, w=wg, **opts))
    assert lift(x).shape[1:3] == (10, 10)
    testing.assert_equivariant(lift, x, **shifts)
    testing.assert_equivariant(
      conv, f, group="p4m", input="p4m", output="p4m", **shifts
    )


def test_circular_padding_is_zero_padding_of_the_wrapped_image():
  x, w = _normal(28, (2, 9, 9, 3)), _filters(29, (3, 3, 3, 4))
  # Dilation 2 spans 5 pixels: 2 wrapped pixels on each side.
  wrapped = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="wrap")
  np.testing.assert_allclose(
    gconv.lifting_conv(x, w, padding="circular", dilation=2),
    gconv.lifting_conv(wrapped, w, padding="VALID", dilation=2),
    rtol=1e-6,
    atol=1e-6,
  )


def test_dilation_equals_the_zero_stuffed_kernel():
  f, w = (
    _normal(30, (2, 11, 11, 3, 4), np.float64),
    _normal(31, (3, 3, 3, 4, 2), np.float64),
  )
  with jax.enable_x64():
    for dilation in (2, 3):
      span = gconv.effective_kernel(3, dilation)
      stuffed = np.zeros((span, span, 3, 4, 2))
      stuffed[::dilation, ::dilation] = w
      np.testing.assert_allclose(
        gconv.group_conv(f, w, padding="SAME", dilation=dilation),
        gconv.group_conv(f, stuffed, padding="SAME"),
        rtol=1e-12,
        atol=1e-12,
      )


def test_circular_max_pool_commutes_with_circular_shifts():
  f = _normal(32, (2, 9, 9, 3, 4))
  pool = jax.jit(
    functools.partial(
      gconv.spatial_max_pool, window=3, strides=1, padding="CIRCULAR"
    )
  )
  assert pool(f).shape == f.shape
  # Bitwise, under circular shifts, rotations and both at once.
  errors = testing.assert_equivariant(
    pool, f, input="p4", output="p4", shifts=[(4, -2)], rtol=0.0
  )
  assert "rot 90 then shift (4, -2)" in errors


def test_translation_equivariance_is_bitwise_on_the_interior():
  f, w = _normal(20, (2, 12, 12, 3, 4)), _filters(21, (3, 3, 3, 4, 4))
  conv = jax.jit(gconv.group_conv)
  out = conv(f, w)
  shifted = conv(np.roll(f, (2, 3), axis=(1, 2)), w)
  # Away from the borders (and the wrapped-around pixels) zero padding and
  # rolling agree: output pixel p of the shifted input is pixel p - t.
  np.testing.assert_array_equal(shifted[:, 3:-1, 4:-1], out[:, 1:-3, 1:-4])


# --------------------------------------------------------------------------
# The exactness predictor, and properties over random settings.


def test_predictor_on_hand_picked_cases():
  assert gconv.is_exactly_equivariant(7, 3, 1, "SAME")
  assert gconv.is_exactly_equivariant(8, 3, 1, "SAME")
  assert gconv.is_exactly_equivariant(8, 4, 1, "VALID")
  assert gconv.is_exactly_equivariant(9, 3, 2, "SAME")
  assert gconv.is_exactly_equivariant(8, 2, 2, 0)
  assert gconv.is_exactly_equivariant(3, 1, 2, (0, 1))  # hi pad never read
  assert not gconv.is_exactly_equivariant(8, 4, 1, "SAME")  # pads (1, 2)
  assert not gconv.is_exactly_equivariant(8, 3, 2, "SAME")  # pads (0, 1)
  assert not gconv.is_exactly_equivariant(8, 3, 2, "VALID")  # 5 % 2 != 0
  assert not gconv.is_exactly_equivariant(8, 3, 1, (0, 1))
  assert not gconv.is_exactly_equivariant(8, 3, 1, ((1, 1), (0, 0)))
  assert gconv.output_size(28, 3, 2, "SAME") == 14
  # Dilation d: a k-tap kernel spans d * (k - 1) + 1 pixels.
  assert gconv.is_exactly_equivariant(8, 3, 1, "CIRCULAR", dilation=4)
  assert not gconv.is_exactly_equivariant(8, 2, 1, "CIRCULAR", dilation=3)
  assert gconv.output_size(28, 3, 1, "VALID", dilation=2) == 24
  assert gconv.output_size(28, 3, 1, "CIRCULAR", dilation=8) == 28
  assert gconv.padding_amounts(28, 3, 1, "SAME", dilation=8) == ((8, 8),) * 2


_STATIC = ("stride", "padding", "dilation")
_OPS = {
  "lifting": (
    jax.jit(gconv.lifting_conv, static_argnames=_STATIC),
    "image",
    lambda k, c: (k, k, c),
  ),
  "group": (
    jax.jit(gconv.group_conv, static_argnames=_STATIC),
    "p4",
    lambda k, c: (k, k, c, 4),
  ),
}


def _conv_check(shape, op):
  """The conv `op` with `shape`'s settings, an input, and its action."""
  conv, action, wshape = _OPS[op]
  extra = () if action == "image" else (4,)
  seed = shape.size * 100 + shape.kernel
  x = _normal(seed, (1, shape.size, shape.size, 2, *extra))
  w = _normal(shape.kernel, (*wshape(shape.kernel, 2), 3))
  fn = functools.partial(
    conv,
    w=w,
    stride=shape.stride,
    padding=shape.padding,
    dilation=shape.dilation,
  )
  return fn, x, dict(input=action, output="p4", elements=["rot 90"])


@hypothesis.settings(max_examples=12)
@hypothesis.given(
  strategies.conv_shapes(exact=True), st.sampled_from(sorted(_OPS))
)
def test_exact_wherever_predicted(shape, op):
  fn, x, kwargs = _conv_check(shape, op)
  testing.assert_equivariant(fn, x, rtol=_RTOL, **kwargs)


@hypothesis.settings(max_examples=12)
@hypothesis.given(
  strategies.conv_shapes(exact=False), st.sampled_from(sorted(_OPS))
)
def test_fails_wherever_not_predicted(shape, op):
  fn, x, kwargs = _conv_check(shape, op)
  testing.assert_not_equivariant(fn, x, min_error=1e-2, **kwargs)


# --------------------------------------------------------------------------
# Negative controls: each must fail, or the tests above prove nothing.


def test_control_plain_conv_is_not_rotation_equivariant():
  x, w = _normal(22, (2, 7, 7, 3)), _filters(23, (3, 3, 3, 4))
  conv = functools.partial(
    jax.lax.conv_general_dilated,
    rhs=w,
    window_strides=(1, 1),
    padding="SAME",
    dimension_numbers=_DN,
  )
  testing.assert_not_equivariant(
    conv, x, output="image", min_error=1e-1, every=True
  )


def test_control_wrong_roll_direction_fails():
  f, w = _normal(24, (2, 7, 7, 3, 4)), _filters(25, (3, 3, 3, 4, 4))
  conv = jax.jit(functools.partial(gconv.group_conv, w=w))

  # Rolling the group axis by -k instead of k is the right action
  # conjugated by the reversal P: f[..., t] -> f[..., -t]. So the wrong
  # convention fails for conv exactly when the right one fails for P conv P.
  def reverse(a):
    return jnp.take(a, np.array([0, 3, 2, 1]), axis=-1)

  def conjugated(a):
    return reverse(conv(reverse(a)))

  rotations = dict(input="p4", output="p4", elements=["rot 90", "rot 270"])
  testing.assert_not_equivariant(
    conjugated, f, min_error=1e-1, every=True, **rotations
  )
  testing.assert_equivariant(conv, f, rtol=_RTOL, **rotations)


def test_wrong_roll_is_the_conjugated_action():
  # The identity the control above rests on, checked on an array.
  f = _normal(30, (1, 5, 5, 2, 4))
  p = np.array([0, 3, 2, 1])
  for k in (1, 3):
    wrong = np.roll(np.rot90(f, k, axes=(1, 2)), -k, axis=-1)
    right = groups.act_on_map(groups.Element(k), f[..., p])[..., p]
    np.testing.assert_array_equal(wrong, right)


def test_control_even_kernel_with_same_padding_fails():
  x, w = _normal(26, (2, 8, 8, 3)), _filters(27, (2, 2, 3, 4))
  assert not gconv.is_exactly_equivariant(8, 2, 1, "SAME")
  conv = functools.partial(gconv.lifting_conv, w=w, padding="SAME")
  testing.assert_not_equivariant(conv, x, elements=[1], min_error=1e-1)


def test_control_stride_two_on_even_input_fails():
  f, w = _normal(28, (2, 8, 8, 3, 4)), _filters(29, (3, 3, 3, 4, 4))
  assert not gconv.is_exactly_equivariant(8, 3, 2, "SAME")
  conv = functools.partial(gconv.group_conv, w=w, stride=2)
  testing.assert_not_equivariant(
    conv, f, input="p4", elements=[1], min_error=1e-1
  )


# --------------------------------------------------------------------------
# Cross-check against the definition, written with coordinates (no rot90).

_R = np.array([[0, -1], [1, 0]])  # one np.rot90 step on (row, col) offsets
_M = np.array([[1, 0], [0, -1]])  # mirror of the column (W) axis


def _matrices(order):
  """Linear parts of the roto-reflections, flat index m * 4 + r."""
  return [
    np.linalg.matrix_power(_R, i % 4) @ np.linalg.matrix_power(_M, i // 4)
    for i in range(order)
  ]


def _naive(f, w, order):
  """`[f * psi](x, g) = sum_{y, h, k} f_k(y, h) psi_k(g^-1 (y, h))`.

  Args:
    f: `[H, W, C]` (an image) or `[H, W, C, G]` (a group map), float64.
    w: `[k, k, C, O]` or `[k, k, C, G, O]`, odd k, centred at k // 2.
    order: G.

  Returns:
    `[H, W, O, G]` with zero ("SAME") padding.
  """
  mats = _matrices(order)
  # g_inv_h[g][h]: the index of g^-1 h, found by its matrix.
  g_inv_h = [
    [
      next(
        j for j, m in enumerate(mats) if np.allclose(m, np.linalg.inv(a) @ b)
      )
      for b in mats
    ]
    for a in mats
  ]
  lifting = f.ndim == 3
  size, half = f.shape[0], w.shape[0] // 2
  out = np.zeros((size, size, w.shape[-1], order))
  for gi, lg in enumerate(mats):
    lg_inv = np.round(np.linalg.inv(lg)).astype(int)
    for x0 in range(size):
      for x1 in range(size):
        for y0 in range(size):
          for y1 in range(size):
            d = lg_inv @ np.array([y0 - x0, y1 - x1])  # g^-1 on the offset
            if np.max(np.abs(d)) > half:
              continue
            taps = w[d[0] + half, d[1] + half]
            if lifting:
              out[x0, x1, :, gi] += f[y0, y1] @ taps
              continue
            for hi in range(order):
              j = g_inv_h[gi][hi]
              out[x0, x1, :, gi] += f[y0, y1, :, hi] @ taps[:, j]
  return out


@pytest.mark.parametrize("group, order", [("p4", 4), ("p4m", 8)])
def test_matches_naive_sum_over_the_group_in_float64(group, order):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 5, 5, 2))
  f = rng.standard_normal((1, 5, 5, 2, order))
  wl = rng.standard_normal((3, 3, 2, 3))
  wg = rng.standard_normal((3, 3, 2, order, 3))
  lifting = gconv.lifting_conv if group == "p4" else gconv.lifting_conv_p4m
  conv = gconv.group_conv if group == "p4" else gconv.group_conv_p4m
  with jax.enable_x64(True):
    got_l = lifting(jnp.asarray(x), jnp.asarray(wl))
    got_g = conv(jnp.asarray(f), jnp.asarray(wg))
    assert got_g.dtype == jnp.float64
  np.testing.assert_allclose(got_l[0], _naive(x[0], wl, order), rtol=1e-12)
  np.testing.assert_allclose(got_g[0], _naive(f[0], wg, order), rtol=1e-12)


# --------------------------------------------------------------------------
# Bad input: one ValueError per case, naming what was expected and what came.


def test_error_wrong_rank():
  with pytest.raises(ValueError, match=r"rank 4, got shape \(2, 6, 6\)"):
    gconv.lifting_conv(jnp.zeros((2, 6, 6)), jnp.zeros((3, 3, 1, 2)))


def test_error_group_map_of_wrong_rank():
  with pytest.raises(ValueError, match=r"rank 5, got shape \(2, 6, 6, 3\)"):
    gconv.group_conv(jnp.zeros((2, 6, 6, 3)), jnp.zeros((3, 3, 3, 4, 2)))


def test_error_group_axis_of_wrong_size():
  with pytest.raises(ValueError, match="group axis .* size 8, got .* 4"):
    gconv.group_conv_p4m(jnp.zeros((1, 6, 6, 3, 4)), jnp.zeros((3, 3, 3, 8, 2)))


def test_error_filter_group_axis_of_wrong_size():
  with pytest.raises(ValueError, match=r"axis 3\) of size 4 .* \(3, 3, 3, 8"):
    gconv.group_conv(jnp.zeros((1, 6, 6, 3, 4)), jnp.zeros((3, 3, 3, 8, 2)))


def test_error_channel_mismatch():
  with pytest.raises(ValueError, match="Cin=3 .* w expects Cin=5"):
    gconv.lifting_conv(jnp.zeros((1, 6, 6, 3)), jnp.zeros((3, 3, 5, 2)))


def test_error_non_integer_rotation():
  with pytest.raises(ValueError, match="integer .* got 1.5 of type float"):
    gconv.rotate_z2(jnp.zeros((1, 4, 4, 1)), 1.5)


def test_error_unknown_padding():
  with pytest.raises(ValueError, match="'SAME', 'VALID', 'CIRCULAR'.* 'FULL'"):
    gconv.lifting_conv(
      jnp.zeros((1, 6, 6, 3)), jnp.zeros((3, 3, 3, 2)), padding="FULL"
    )


def test_error_bad_dilation():
  for bad in (0, 1.5, True):
    with pytest.raises(ValueError, match="dilation must be a positive integer"):
      gconv.lifting_conv(
        jnp.zeros((1, 6, 6, 3)), jnp.zeros((3, 3, 3, 2)), dilation=bad
      )


def test_error_dilated_kernel_larger_than_the_input():
  with pytest.raises(ValueError, match=r"span 9 at dilation 4"):
    gconv.is_exactly_equivariant(6, 3, 1, "VALID", dilation=4)


def test_error_unknown_pooling():
  with pytest.raises(ValueError, match=r"\('max', 'mean'\), got 'median'"):
    gconv.group_pool(jnp.zeros((1, 4, 4, 2, 4)), reduce="median")


def test_error_non_square_kernel():
  with pytest.raises(ValueError, match="square .* got 3x2"):
    gconv.lifting_conv(jnp.zeros((1, 6, 6, 3)), jnp.zeros((3, 2, 3, 2)))


def test_error_bad_stride():
  with pytest.raises(ValueError, match="positive integer, got 0"):
    gconv.group_conv(
      jnp.zeros((1, 6, 6, 3, 4)), jnp.zeros((3, 3, 3, 4, 2)), stride=0
    )


def test_error_nested_padding_of_floats_or_bools():
  for bad in (((1.5, 1), (1, 1)), ((True, 0), (0, 0)), (1, 0.5)):
    with pytest.raises(ValueError, match="padding must be 'SAME'"):
      gconv.normalize_padding(bad)


# --------------------------------------------------------------------------
# Bad input, one test per class: mixed dtypes, integer pooling,
# malformed predictor arguments, kernels that do not fit the input.

_CONVS = [
  (gconv.lifting_conv, (1, 6, 6, 2), (3, 3, 2, 3)),
  (gconv.group_conv, (1, 6, 6, 2, 4), (3, 3, 2, 4, 3)),
  (gconv.lifting_conv_p4m, (1, 6, 6, 2), (3, 3, 2, 3)),
  (gconv.group_conv_p4m, (1, 6, 6, 2, 8), (3, 3, 2, 8, 3)),
]


@pytest.mark.parametrize("conv, xshape, wshape", _CONVS)
def test_mixed_dtypes_promote_as_jnp_does(conv, xshape, wshape):
  x = _normal(40, xshape)
  w_int = np.random.default_rng(41).integers(-3, 4, wshape).astype(np.int32)
  w = _filters(42, wshape)
  cases = [
    ((x, w_int), (x, w_int.astype(np.float32))),  # float32 with int32
    ((x.astype(jnp.bfloat16), w), (x.astype(jnp.bfloat16), w)),  # bf16, f32
    ((x.astype(np.int8), w), (x.astype(np.int8), w)),  # int8 with f32
  ]
  for (a, b), (ref_a, ref_b) in cases:
    got = conv(a, b)
    assert got.dtype == jnp.result_type(a, b)
    ref = conv(jnp.asarray(ref_a, got.dtype), jnp.asarray(ref_b, got.dtype))
    np.testing.assert_array_equal(got, ref)
  with pytest.raises(TypeError, match="int32 and w int32 .* cast one"):
    conv(x.astype(np.int32), w_int)


def test_mixed_dtypes_keep_one_convolution():
  shapes = [
    jax.ShapeDtypeStruct((2, 6, 6, 3), jnp.bfloat16),
    jax.ShapeDtypeStruct((3, 3, 3, 4), jnp.int32),
  ]
  jaxpr = jax.make_jaxpr(gconv.lifting_conv)(*shapes)
  names = [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]
  assert names.count("conv_general_dilated") == 1
  assert jaxpr.out_avals[0].dtype == jnp.bfloat16  # bf16 with int32: bf16


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
def test_spatial_max_pool_takes_integer_and_bool_inputs(padding):
  values = np.random.default_rng(43).integers(-100, 100, (2, 7, 7, 3, 4))
  for dtype in (np.int8, np.int32, np.uint8, np.int64):
    a = (values + 100 * (dtype == np.uint8)).astype(dtype)
    got = gconv.spatial_max_pool(a, 3, 2, padding=padding)
    assert got.dtype == jnp.asarray(a).dtype
    ref = gconv.spatial_max_pool(a.astype(np.float32), 3, 2, padding=padding)
    np.testing.assert_array_equal(got, np.asarray(ref).astype(dtype))
  ref = gconv.spatial_max_pool(values.astype(np.float32), 3, 2, padding=padding)
  mask = gconv.spatial_max_pool(values > 50, 3, 2, padding=padding)
  np.testing.assert_array_equal(mask, np.asarray(ref) > 50)
  with pytest.raises(TypeError, match="real .* dtype, got complex64"):
    gconv.spatial_max_pool(values.astype(np.complex64), 2)


def test_error_predictor_arguments():
  calls = [
    (lambda: gconv.is_exactly_equivariant((8, 8), 3), TypeError, "size"),
    (lambda: gconv.is_exactly_equivariant(8, (3, 3)), TypeError, "kernel"),
    (lambda: gconv.is_exactly_equivariant(8, 0), ValueError, "kernel"),
    (lambda: gconv.is_exactly_equivariant(0, 3), ValueError, "size"),
    (lambda: gconv.is_exactly_equivariant(8, 3.0), TypeError, "kernel"),
    (lambda: gconv.output_size(8, -1, 1, "SAME"), ValueError, "kernel"),
    (lambda: gconv.padding_amounts(8, 3, 0, "SAME"), ValueError, "stride"),
    (lambda: gconv.effective_kernel(True), TypeError, "kernel"),
  ]
  for call, error, name in calls:
    with pytest.raises(error, match=rf"^{name} must be .*, got "):
      call()


@pytest.mark.parametrize("conv, xshape, wshape", _CONVS)
def test_error_kernel_larger_than_the_padded_input(conv, xshape, wshape):
  x = _normal(44, xshape)
  big = (7, 7, *wshape[2:])
  with pytest.raises(ValueError, match=r"6x6 .* at least 7x7\.$"):
    conv(x, _filters(45, big), padding="VALID")
  with pytest.raises(ValueError, match=r"span 9 .* at least 7x8\.$"):
    conv(x, _filters(45, wshape), padding=((1, 1), (0, 1)), dilation=4)
  # The smallest accepted size gives one pixel; SAME pads any kernel in.
  assert conv(x, _filters(46, (6, 6, *wshape[2:])), padding=0).shape[1:3] == (
    1,
    1,
  )
  assert conv(x, _filters(45, big)).shape[1:3] == (6, 6)
  with pytest.raises(ValueError, match="at least one pixel along H and W"):
    conv(x[:, :0], _filters(45, wshape))


def test_error_pool_window_larger_than_the_input():
  f = _normal(47, (1, 4, 4, 2, 4))
  with pytest.raises(ValueError, match=r"5x5 window .* at least 5x5\."):
    gconv.spatial_max_pool(f, 5)
  assert gconv.spatial_max_pool(f, 5, padding="SAME").shape[1:3] == (1, 1)
  with pytest.raises(ValueError, match="window must be a positive integer"):
    gconv.spatial_max_pool(f, 0)


def test_array_likes_are_accepted():
  x = _normal(48, (1, 3, 3, 1))
  np.testing.assert_array_equal(
    gconv.rotate_z2(x.tolist(), 1), np.rot90(x, 1, axes=(1, 2))
  )
  f = _normal(49, (1, 3, 3, 1, 4))
  np.testing.assert_array_equal(
    gconv.rotate_p4(f.tolist(), 2), groups.act_on_map(groups.Element(2), f)
  )
  np.testing.assert_array_equal(
    gconv.group_pool(f.tolist()), np.max(f, axis=-1)
  )


@pytest.mark.parametrize("order", [4, 8])
def test_group_max_pool_matches_jnp_max_in_value_and_derivatives(order):
  # ReLU'd maps tie at 0 everywhere; row 0 adds two- and three-way ties of
  # positive values. jnp.max shares a tangent equally among tied entries.
  rng = np.random.default_rng(order)
  with jax.enable_x64(True):
    f = np.maximum(rng.standard_normal((2, 3, 3, 2, order)), 0)
    f[0, 0, 0, 0, :3] = 5.0
    f[0, 0, 1, 0, 1:3] = 7.0
    f = jnp.asarray(f)
    tangent = jnp.asarray(rng.standard_normal(f.shape))
    cotangent = jnp.asarray(rng.standard_normal(f.shape[:-1]))
    want = lambda f: jnp.max(f, axis=-1)  # noqa: E731
    np.testing.assert_array_equal(gconv.group_pool(f), want(f))
    got_vjp = jax.vjp(gconv.group_pool, f)[1](cotangent)[0]
    np.testing.assert_allclose(
      got_vjp, jax.vjp(want, f)[1](cotangent)[0], rtol=1e-15
    )
    got_jvp = jax.jvp(gconv.group_pool, (f,), (tangent,))[1]
    np.testing.assert_allclose(
      got_jvp, jax.jvp(want, (f,), (tangent,))[1], rtol=1e-15
    )
    assert float(got_vjp[0, 0, 0, 0, 0]) == pytest.approx(
      float(cotangent[0, 0, 0, 0]) / 3
    )


def test_group_max_pool_of_integers_and_nan():
  f = jnp.arange(2 * 4).reshape(1, 1, 1, 2, 4)
  np.testing.assert_array_equal(gconv.group_pool(f), [[[[3, 7]]]])
  g = jnp.asarray([[[[[1.0, np.nan, 0.0, 2.0]]]]])
  assert np.isnan(gconv.group_pool(g)).all()
