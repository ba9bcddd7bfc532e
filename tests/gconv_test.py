"""Numerical proofs that the p4/p4m convolutions are equivariant.

Seed 000 part 1: `[[L_u f] * w](g) = [L_u [f * w]](g)`. Each test states an
equivariance `op(g x) == g op(x)` with fixed keys and an explicit tolerance:
rtol 1e-5 with an absolute floor of 1e-5 times the output's largest value
(float32 sums in a different order after a rotation).
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

from equivlab import gconv, groups

_DN = ("NHWC", "HWIO", "NHWC")


def _normal(seed, shape, dtype=np.float32):
  # NumPy inputs, and group actions applied in NumPy on the host: the tests
  # compile only the functions under test.
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _filters(seed, shape, dtype=np.float32):
  fan_in = int(np.prod(shape[:-1]))
  return _normal(seed, shape, dtype) / np.sqrt(fan_in).astype(dtype)


def _rot_image(x, k):
  return groups.act_on_image(groups.Element(k), np.asarray(x))


def _rot_map(f, k):
  return groups.act_on_map(groups.Element(k), np.asarray(f))


def _act_image(g, x):
  return groups.act_on_image(g, np.asarray(x))


def _act_map(g, f):
  return groups.act_on_map(g, np.asarray(f))


def _assert_equivariant(actual, expected, rtol=1e-5):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  atol = rtol * float(np.max(np.abs(expected)))
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def _rel_error(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  if actual.shape != expected.shape:
    return np.inf
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


_NONTRIVIAL_P4M = groups.elements("p4m")[1:]


class RotationEquivarianceTest(chex.TestCase):
  """Exact rot90 (and mirror) equivariance, odd and even sizes, jit or not."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("odd", 7), ("even", 8))
  def test_lifting_conv(self, size):
    x, w = _normal(0, (2, size, size, 3)), _filters(1, (3, 3, 3, 5))
    conv = self.variant(gconv.lifting_conv)
    out = conv(x, w)
    self.assertEqual(out.shape, (2, size, size, 5, 4))
    for k in (1, 2, 3):
      _assert_equivariant(conv(_rot_image(x, k), w), _rot_map(out, k))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("odd", 7), ("even", 8))
  def test_group_conv(self, size):
    f, w = _normal(2, (2, size, size, 3, 4)), _filters(3, (3, 3, 3, 4, 5))
    conv = self.variant(gconv.group_conv)
    out = conv(f, w)
    self.assertEqual(out.shape, (2, size, size, 5, 4))
    for k in (1, 2, 3):
      _assert_equivariant(conv(_rot_map(f, k), w), _rot_map(out, k))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("odd", 7), ("even", 8))
  def test_lifting_conv_p4m(self, size):
    x, w = _normal(4, (2, size, size, 3)), _filters(5, (3, 3, 3, 5))
    conv = self.variant(gconv.lifting_conv_p4m)
    out = conv(x, w)
    self.assertEqual(out.shape, (2, size, size, 5, 8))
    for g in _NONTRIVIAL_P4M:
      _assert_equivariant(conv(_act_image(g, x), w), _act_map(g, out))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("odd", 7), ("even", 8))
  def test_group_conv_p4m(self, size):
    f, w = _normal(6, (2, size, size, 3, 8)), _filters(7, (3, 3, 3, 8, 5))
    conv = self.variant(gconv.group_conv_p4m)
    out = conv(f, w)
    for g in _NONTRIVIAL_P4M:
      _assert_equivariant(conv(_act_map(g, f), w), _act_map(g, out))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("odd", 7), ("even", 8))
  def test_group_pool_is_invariant_in_channels(self, size):
    f = _normal(8, (2, size, size, 3, 8))
    for reduce in ("max", "mean"):
      pool = self.variant(functools.partial(gconv.group_pool, reduce=reduce))
      out = pool(f)
      self.assertEqual(out.shape, (2, size, size, 3))
      for g in _NONTRIVIAL_P4M:
        _assert_equivariant(pool(_act_map(g, f)), _act_image(g, out))

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("window2", 8, 2), ("window3", 9, 3))
  def test_spatial_max_pool(self, size, window):
    f = _normal(9, (2, size, size, 3, 8))
    pool = self.variant(
      functools.partial(gconv.spatial_max_pool, window=window)
    )
    out = pool(f)
    self.assertEqual(out.shape, (2, size // window, size // window, 3, 8))
    for g in _NONTRIVIAL_P4M:
      np.testing.assert_array_equal(pool(_act_map(g, f)), _act_map(g, out))

  def test_strided_and_even_kernel_where_predicted(self):
    # Stride 2 on an odd size with SAME; an even kernel with VALID padding.
    cases = [(9, 3, 2, "SAME"), (8, 4, 1, "VALID"), (8, 2, 2, ((1, 1),) * 2)]
    for size, kernel, stride, padding in cases:
      self.assertTrue(
        gconv.is_exactly_equivariant(size, kernel, stride, padding)
      )
      f = _normal(10, (1, size, size, 2, 4))
      w = _filters(11, (kernel, kernel, 2, 4, 3))
      conv = functools.partial(gconv.group_conv, stride=stride, padding=padding)
      out = conv(f, w)
      for k in (1, 2, 3):
        _assert_equivariant(conv(_rot_map(f, k), w), _rot_map(out, k))


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


def test_translation_equivariance_is_bitwise_with_circular_padding():
  x, f = _normal(16, (2, 10, 10, 3)), _normal(17, (2, 10, 10, 3, 8))
  wl, wg = _filters(18, (3, 3, 3, 4)), _filters(19, (3, 3, 3, 8, 4))

  def wrap(a):
    pad = ((0, 0), (1, 1), (1, 1)) + ((0, 0),) * (a.ndim - 3)
    return jnp.pad(a, pad, mode="wrap")

  ops = [
    (lambda a: gconv.lifting_conv(wrap(a), wl, padding="VALID"), x),
    (lambda a: gconv.group_conv_p4m(wrap(a), wg, padding="VALID"), f),
  ]
  for op, a in ops:
    op = jax.jit(op)
    out = op(a)
    for shift in [(1, 0), (2, -3), (-4, 7)]:
      np.testing.assert_array_equal(
        op(np.roll(a, shift, axis=(1, 2))), np.roll(out, shift, axis=(1, 2))
      )


def test_circular_padding_commutes_with_circular_shifts_bitwise():
  x, f = _normal(24, (2, 10, 10, 3)), _normal(25, (2, 10, 10, 3, 8))
  wl, wg = _filters(26, (3, 3, 3, 4)), _filters(27, (3, 3, 3, 8, 4))
  for dilation in (1, 2, 4):
    ops = [
      (functools.partial(gconv.lifting_conv, w=wl), x),
      (functools.partial(gconv.group_conv_p4m, w=wg), f),
    ]
    for op, a in ops:
      op = jax.jit(functools.partial(op, padding="CIRCULAR", dilation=dilation))
      out = op(a)
      assert out.shape[1:3] == (10, 10)
      for shift in [(1, 0), (2, -3), (-4, 7)]:
        np.testing.assert_array_equal(
          op(np.roll(a, shift, axis=(1, 2))), np.roll(out, shift, axis=(1, 2))
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
  out = pool(f)
  assert out.shape == f.shape
  np.testing.assert_array_equal(
    pool(np.roll(f, (4, -2), axis=(1, 2))), np.roll(out, (4, -2), axis=(1, 2))
  )


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
    _rot_image,
    4,
    lambda k, c: (k, k, c),
  ),
  "group": (
    jax.jit(gconv.group_conv, static_argnames=_STATIC),
    _rot_map,
    5,
    lambda k, c: (k, k, c, 4),
  ),
}


@st.composite
def _settings(draw):
  size = draw(st.integers(3, 9))
  kernel = draw(st.integers(1, 4))
  stride = draw(st.sampled_from([1, 1, 2, 3]))
  padding = draw(
    st.one_of(
      st.sampled_from(["SAME", "VALID", "CIRCULAR"]),
      st.integers(0, 2),
      st.tuples(st.integers(0, 2), st.integers(0, 2)),
    )
  )
  dilation = draw(st.sampled_from([1, 1, 2]))
  op = draw(st.sampled_from(sorted(_OPS)))
  (lo, hi), _ = gconv.padding_amounts(size, kernel, stride, padding, dilation)
  hypothesis.assume(size + lo + hi >= gconv.effective_kernel(kernel, dilation))
  return size, kernel, stride, padding, dilation, op


def _equivariance_error(size, kernel, stride, padding, dilation, op):
  conv, rotate, rank, wshape = _OPS[op]
  x = _normal(size * 100 + kernel, (1, size, size, 2) + (4,) * (rank - 4))
  w = _normal(kernel, (*wshape(kernel, 2), 3))
  conv = functools.partial(
    conv, stride=stride, padding=padding, dilation=dilation
  )
  out = conv(x, w)
  return _rel_error(conv(rotate(x, 1), w), _rot_map(out, 1))


@hypothesis.settings(max_examples=12)
@hypothesis.given(_settings())
def test_exact_wherever_predicted(setting):
  hypothesis.assume(gconv.is_exactly_equivariant(*setting[:5]))
  assert _equivariance_error(*setting) < 1e-5


@hypothesis.settings(max_examples=12)
@hypothesis.given(_settings())
def test_fails_wherever_not_predicted(setting):
  hypothesis.assume(not gconv.is_exactly_equivariant(*setting[:5]))
  assert _equivariance_error(*setting) > 1e-2


# --------------------------------------------------------------------------
# Negative controls: each must fail, or the tests above prove nothing.


def test_control_plain_conv_is_not_rotation_equivariant():
  x, w = _normal(22, (2, 7, 7, 3)), _filters(23, (3, 3, 3, 4))
  conv = functools.partial(
    jax.lax.conv_general_dilated,
    window_strides=(1, 1),
    padding="SAME",
    dimension_numbers=_DN,
  )
  err = _rel_error(conv(_rot_image(x, 1), w), _rot_image(conv(x, w), 1))
  assert err > 1e-1


def test_control_wrong_roll_direction_fails():
  f, w = _normal(24, (2, 7, 7, 3, 4)), _filters(25, (3, 3, 3, 4, 4))

  def wrong(a, k):
    return np.roll(np.rot90(np.asarray(a), k, axes=(1, 2)), -k, axis=-1)

  out = gconv.group_conv(f, w)
  for k in (1, 3):
    assert _rel_error(gconv.group_conv(wrong(f, k), w), wrong(out, k)) > 1e-1
    _assert_equivariant(gconv.group_conv(_rot_map(f, k), w), _rot_map(out, k))


def test_control_even_kernel_with_same_padding_fails():
  x, w = _normal(26, (2, 8, 8, 3)), _filters(27, (2, 2, 3, 4))
  assert not gconv.is_exactly_equivariant(8, 2, 1, "SAME")
  out = gconv.lifting_conv(x, w, padding="SAME")
  got = gconv.lifting_conv(_rot_image(x, 1), w, padding="SAME")
  assert _rel_error(got, _rot_map(out, 1)) > 1e-1


def test_control_stride_two_on_even_input_fails():
  f, w = _normal(28, (2, 8, 8, 3, 4)), _filters(29, (3, 3, 3, 4, 4))
  assert not gconv.is_exactly_equivariant(8, 3, 2, "SAME")
  out = gconv.group_conv(f, w, stride=2)
  got = gconv.group_conv(_rot_map(f, 1), w, stride=2)
  assert _rel_error(got, _rot_map(out, 1)) > 1e-1


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
