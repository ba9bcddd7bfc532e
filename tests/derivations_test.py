"""Tests of the hand-derived forward and backward passes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from equivlab.fundamentals import derivations, gradcheck

# ---------------------------------------------------------------------------
# Convolution output shapes.
# ---------------------------------------------------------------------------


def _lax_conv_shape(in_shape, k_shape, strides, padding):
  nd = len(in_shape) - 2
  spatial = "DHW"[-nd:]
  dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
  out = jax.eval_shape(
    lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, [(p, p) for p in padding], dimension_numbers=dn
    ),
    jax.ShapeDtypeStruct(in_shape, jnp.float32),
    jax.ShapeDtypeStruct(k_shape, jnp.float32),
  )
  return out.shape


@st.composite
def _conv_case(draw):
  nd = draw(st.integers(1, 3))
  n = [draw(st.integers(1, 12)) for _ in range(nd)]
  p = [draw(st.integers(0, 3)) for _ in range(nd)]
  k = [draw(st.integers(1, ni + 2 * pi)) for ni, pi in zip(n, p, strict=True)]
  s = [draw(st.integers(1, 4)) for _ in range(nd)]
  c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 5))
  return (2, *n, c_in), (*k, c_in, c_out), tuple(s), tuple(p)


@given(_conv_case())
def test_conv_output_shape_matches_lax_in_1d_2d_3d(case):
  in_shape, k_shape, strides, padding = case
  ours = derivations.conv_output_shape(in_shape, k_shape, strides, padding)
  assert ours == _lax_conv_shape(in_shape, k_shape, strides, padding)


@given(_conv_case())
def test_output_size_is_a_floor_a_ceiling_overcounts(case):
  # The size is floor((n + 2P - k) / s) + 1. A ceiling, ceil((n - k + 2P) /
  # s + 1), agrees with lax only when s divides n + 2P - k; otherwise it
  # counts one window too many.
  in_shape, k_shape, strides, padding = case
  lax_shape = _lax_conv_shape(in_shape, k_shape, strides, padding)
  for axis, (n, k, s, p) in enumerate(
    zip(in_shape[1:-1], k_shape[:-2], strides, padding, strict=True)
  ):
    ceiling = math.ceil((n - k + 2 * p) / s + 1)
    if (n + 2 * p - k) % s:
      assert ceiling == lax_shape[1 + axis] + 1
    else:
      assert ceiling == lax_shape[1 + axis]


def test_output_size_floor_counterexample_and_a_30x30_example():
  assert derivations.conv_output_size(6, 3, stride=2) == 2
  assert math.ceil((6 - 3) / 2 + 1) == 3  # a ceiling counts 3.
  assert _lax_conv_shape((1, 6, 1), (3, 1, 1), (2,), (0,)) == (1, 2, 1)
  # A 30x30 input, 3x3 kernel, stride 1 -> 28x28xC.
  shape = derivations.conv_output_shape((1, 30, 30, 3), (3, 3, 3, 7))
  assert shape == (1, 28, 28, 7)


def test_conv_output_shape_bad_input():
  with pytest.raises(ValueError, match="kernel length 5 exceeds"):
    derivations.conv_output_size(3, 5)
  with pytest.raises(ValueError, match="stride must be an integer >= 1"):
    derivations.conv_output_size(5, 3, stride=0)
  with pytest.raises(ValueError, match="padding must be an integer >= 0"):
    derivations.conv_output_size(5, 3, padding=-1)
  with pytest.raises(ValueError, match="1 to 3 spatial axes"):
    derivations.conv_output_shape((1, 2, 2, 2, 2, 1), (1, 1, 1, 1, 1, 1))
  with pytest.raises(ValueError, match="kernel_shape must have rank 4"):
    derivations.conv_output_shape((1, 5, 5, 1), (3, 1, 1))
  with pytest.raises(ValueError, match="input channels 3"):
    derivations.conv_output_shape((1, 5, 5, 3), (3, 3, 2, 4))
  with pytest.raises(ValueError, match="strides must be an int or have 2"):
    derivations.conv_output_shape((1, 5, 5, 1), (3, 3, 1, 1), (1, 1, 1))


# ---------------------------------------------------------------------------
# 1-D cross-correlation.
# ---------------------------------------------------------------------------


def _conv1d_fixture():
  params = {"w": jnp.array([2.0, 1.0, 3.0]), "b": jnp.array(1.0)}
  return params, jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([2.0, 4.0])


def test_conv1d_fixture_forward_backward_and_step():
  with jax.enable_x64(True):
    params, x, y = _conv1d_fixture()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    y_hat = derivations.conv1d(x, params["w"], params["b"])
    np.testing.assert_allclose(y_hat, [14.0, 20.0], rtol=0, atol=1e-12)
    loss, grads = derivations.conv1d_backward(params, x, y)
    np.testing.assert_allclose(loss, 200.0, atol=1e-12)
    np.testing.assert_allclose(grads["w"], [44.0, 72.0, 100.0], atol=1e-12)
    np.testing.assert_allclose(grads["b"], 28.0, atol=1e-12)
    new = derivations.sgd_step(params, grads, 0.01)
    np.testing.assert_allclose(new["w"], [1.56, 0.28, 2.0], atol=1e-12)
    np.testing.assert_allclose(new["b"], 0.72, atol=1e-12)
    new_y_hat = derivations.conv1d(x, new["w"], new["b"])
    np.testing.assert_allclose(new_y_hat, [8.84, 12.68], atol=1e-12)
    np.testing.assert_allclose(
      derivations.conv1d_loss(new, x, y), 61.064, atol=1e-10
    )


def test_conv1d_dl_dw2_is_72_and_one_step_gives_0_28():
  with jax.enable_x64(True):
    params, x, y = _conv1d_fixture()
    _, grads = derivations.conv1d_backward(params, x, y)
    # dL/dw_2 = sum_i r_i x_{i+2} = 12 * 2 + 16 * 3 = 72.
    assert float(grads["w"][1]) == 72.0
    new = derivations.sgd_step(params, grads, 0.01)
    # w_2 - lr * dL/dw_2 = 1 - 0.01 * 72 = 0.28.
    np.testing.assert_allclose(new["w"][1], 0.28, atol=1e-12)


def test_conv1d_backward_matches_autodiff_and_finite_differences():
  with jax.enable_x64(True):
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (9,), jnp.float64)
    params = {
      "w": jax.random.normal(kw, (4,), jnp.float64),
      "b": jnp.array(0.3),
    }
    y = jax.random.normal(ky, (6,), jnp.float64)

    @jax.jit
    def hand(p, x, y):
      return derivations.conv1d_backward(p, x, y)[1]

    loss = jax.jit(derivations.conv1d_loss)
    auto = jax.jit(jax.grad(derivations.conv1d_loss))(params, x, y)
    assert gradcheck.max_relative_error(hand(params, x, y), auto) < 1e-12
    err = gradcheck.check_gradients(loss, hand, params, x, y)
    assert err < 1e-7


def test_conv1d_bad_input():
  params, x, _ = _conv1d_fixture()
  with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
    derivations.conv1d_backward(params, x, jnp.ones(3))
  with pytest.raises(ValueError, match="x must have rank 1"):
    derivations.conv1d(jnp.ones((2, 4)), params["w"], params["b"])
  with pytest.raises(ValueError, match="must not exceed input length 2"):
    derivations.conv1d(jnp.ones(2), params["w"], params["b"])


# ---------------------------------------------------------------------------
# Batch normalisation (Ioffe & Szegedy 2015).
# ---------------------------------------------------------------------------


def _bn_setup():
  kx, kg, kb, kt = jax.random.split(jax.random.key(1), 4)
  x = 2.0 + 3.0 * jax.random.normal(kx, (6, 3), jnp.float64)
  gamma = 1.0 + jax.random.normal(kg, (3,), jnp.float64)
  beta = jax.random.normal(kb, (3,), jnp.float64)
  target = jax.random.normal(kt, (6, 3), jnp.float64)
  return x, gamma, beta, target


def _head(y, target):
  # A nonlinear scalar loss of the batch norm output; dl/dy by hand below.
  return jnp.sum(jnp.sin(y) * target)


def test_batch_norm_backward_matches_autodiff_step_by_step():
  eps = 1e-5
  with jax.enable_x64(True):
    x, gamma, beta, target = _bn_setup()
    y, cache = derivations.batch_norm_forward(x, gamma, beta, eps)
    hand = derivations.batch_norm_backward(jnp.cos(y) * target, cache)
    mu, var = cache["mu"], cache["var"]

    # Each intermediate as a function of the variables held free.
    def l_of_x_hat(x_hat):
      return _head(gamma[None, :] * x_hat + beta[None, :], target)

    def l_of_x_mu_var(x, mu, var):
      return l_of_x_hat((x - mu[None, :]) / jnp.sqrt(var + eps)[None, :])

    def l_of_x_mu(x, mu):
      return l_of_x_mu_var(x, mu, jnp.mean((x - mu[None, :]) ** 2, axis=0))

    def l_of_all(params, x):
      out, _ = derivations.batch_norm_forward(
        x, params["gamma"], params["beta"], eps
      )
      return _head(out, target)

    def l_of_x(x, params):
      return l_of_all(params, x)

    params = {"gamma": gamma, "beta": beta}
    auto = {
      "dx_hat": jax.grad(l_of_x_hat)(cache["x_hat"]),
      "dvar": jax.grad(l_of_x_mu_var, argnums=2)(x, mu, var),
      "dmean": jax.grad(l_of_x_mu, argnums=1)(x, mu),
      "dx": jax.grad(l_of_all, argnums=1)(params, x),
      "dgamma": jax.grad(l_of_all)(params, x)["gamma"],
      "dbeta": jax.grad(l_of_all)(params, x)["beta"],
    }
    for name, value in auto.items():
      np.testing.assert_allclose(hand[name], value, rtol=1e-10, atol=1e-12)

    # And against central finite differences, for every parameter.
    fd_x = gradcheck.finite_difference_grad(jax.jit(l_of_x), x, params)
    assert gradcheck.max_relative_error(hand["dx"], fd_x) < 1e-5
    fd_p = gradcheck.finite_difference_grad(jax.jit(l_of_all), params, x)
    got = {"gamma": hand["dgamma"], "beta": hand["dbeta"]}
    assert gradcheck.max_relative_error(got, fd_p) < 1e-7
    fd_mean = gradcheck.finite_difference_grad(
      jax.jit(lambda m, x: l_of_x_mu(x, m)), mu, x
    )
    assert gradcheck.max_relative_error(hand["dmean"], fd_mean) < 1e-6
    fd_var = gradcheck.finite_difference_grad(
      jax.jit(lambda v, x: l_of_x_mu_var(x, mu, v)), var, x
    )
    assert gradcheck.max_relative_error(hand["dvar"], fd_var) < 1e-6


def test_batch_norm_forward_normalises():
  with jax.enable_x64(True):
    x, gamma, beta, _ = _bn_setup()
    _, cache = derivations.batch_norm_forward(x, gamma, beta, eps=0.0)
    np.testing.assert_allclose(cache["x_hat"].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(cache["x_hat"].var(0), 1.0, rtol=1e-12)


def test_batch_variance_squares_the_deviations():
  z = jnp.array([[1.0, -2.0], [3.0, 0.0], [8.0, 5.0]])
  mu, var = derivations.batch_statistics(z)
  np.testing.assert_allclose(mu, np.mean(z, axis=0), rtol=1e-6)
  np.testing.assert_allclose(var, np.var(np.asarray(z), axis=0), rtol=1e-6)
  # Without the square, 1/M sum (z_i - mu) is zero for every batch.
  unsquared = jnp.mean(z - mu[None, :], axis=0)
  np.testing.assert_allclose(unsquared, 0.0, atol=1e-6)
  assert np.all(var > 1.0)


def test_batch_norm_bad_input():
  x = jnp.ones((4, 3))
  with pytest.raises(ValueError, match="x must have rank 2"):
    derivations.batch_norm_forward(jnp.ones(3), jnp.ones(3), jnp.ones(3))
  with pytest.raises(ValueError, match=r"gamma and beta must have shape"):
    derivations.batch_norm_forward(x, jnp.ones(2), jnp.ones(3))
  _, cache = derivations.batch_norm_forward(x, jnp.ones(3), jnp.zeros(3))
  with pytest.raises(ValueError, match=r"dy must have shape \(4, 3\)"):
    derivations.batch_norm_backward(jnp.ones((4, 2)), cache)
  with pytest.raises(ValueError, match="z must have rank 2"):
    derivations.batch_statistics(jnp.ones(3))


# ---------------------------------------------------------------------------
# Softmax with cross-entropy.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["one_hot", "soft"])
def test_softmax_ce_gradient_is_y_hat_minus_y(kind):
  with jax.enable_x64(True):
    kz, ky = jax.random.split(jax.random.key(2))
    logits = jax.random.normal(kz, (5,), jnp.float64)
    if kind == "one_hot":
      labels = jax.nn.one_hot(3, 5, dtype=jnp.float64)
    else:
      labels = jax.nn.softmax(jax.random.normal(ky, (5,), jnp.float64))
    hand = derivations.softmax_cross_entropy_grad(logits, labels)
    np.testing.assert_allclose(
      hand, jax.nn.softmax(logits) - labels, rtol=1e-12, atol=1e-15
    )
    auto = jax.grad(derivations.softmax_cross_entropy)(logits, labels)
    np.testing.assert_allclose(hand, auto, rtol=1e-10, atol=1e-14)
    err = gradcheck.check_gradients(
      derivations.softmax_cross_entropy,
      derivations.softmax_cross_entropy_grad,
      logits,
      labels,
    )
    assert err < 1e-6


@pytest.mark.parametrize(
  "labels",
  [
    [0.0, 2.0, 0.0, 0.0, 0.0],  # A one-hot target scaled by 2.
    [0.5, 1.5, 0.25, 3.0, 0.0],  # Sums to 5.25.
    [0.1, 0.0, 0.2, 0.0, 0.1],  # Sums to 0.4.
    [0.0, 0.0, 0.0, 0.0, 0.0],  # No target: the gradient is zero.
    [1.0, -0.5, 0.0, 0.25, 0.0],  # A negative weight.
  ],
)
def test_softmax_ce_gradient_general_form_for_unnormalised_targets(labels):
  # dL/dz = y_hat * sum(y) - y; `y_hat - y` alone would be wrong here.
  with jax.enable_x64(True):
    logits = jnp.array([0.3, -1.2, 2.0, 0.7, -0.1], jnp.float64)
    labels = jnp.array(labels, jnp.float64)
    hand = derivations.softmax_cross_entropy_grad(logits, labels)
    auto = jax.grad(derivations.softmax_cross_entropy)(logits, labels)
    np.testing.assert_allclose(hand, auto, rtol=1e-12, atol=1e-14)
    y_hat = jax.nn.softmax(logits)
    np.testing.assert_allclose(
      hand, y_hat * jnp.sum(labels) - labels, rtol=1e-12, atol=1e-15
    )
    if float(jnp.sum(labels)) != 1.0:
      assert not np.allclose(hand, y_hat - labels, atol=1e-3)
    # The loss is linear in the targets: L(2y) = 2 L(y), and so its gradient.
    np.testing.assert_allclose(
      derivations.softmax_cross_entropy_grad(logits, 2 * labels),
      2 * hand,
      rtol=1e-12,
      atol=1e-15,
    )


def test_softmax_ce_stable_for_logits_of_size_1e4():
  logits = jnp.array([1e4, -1e4, 9990.0, 0.0], jnp.float32)
  labels = jnp.array([0.0, 0.0, 1.0, 0.0], jnp.float32)
  loss = derivations.softmax_cross_entropy(logits, labels)
  grad = derivations.softmax_cross_entropy_grad(logits, labels)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  # The exact values: loss = 10 + log(1 + e^-10); y_hat_0 = 1 / (1 + e^-10).
  np.testing.assert_allclose(loss, 10.0 + np.log1p(np.exp(-10.0)), rtol=1e-6)
  y0 = 1.0 / (1.0 + np.exp(-10.0))
  np.testing.assert_allclose(grad, [y0, 0.0, 1 - y0 - 1.0, 0.0], atol=1e-6)
  naive = -jnp.log(jnp.exp(logits[2]) / jnp.sum(jnp.exp(logits)))
  assert not np.isfinite(naive)  # what the shift by the maximum avoids.


def test_softmax_ce_batches_with_vmap_and_rejects_bad_shapes():
  logits = jnp.zeros((4, 3))
  labels = jax.nn.one_hot(jnp.arange(4) % 3, 3)
  losses = jax.vmap(derivations.softmax_cross_entropy)(logits, labels)
  np.testing.assert_allclose(losses, np.log(3.0) * np.ones(4), rtol=1e-6)
  with pytest.raises(ValueError, match="logits must have rank 1"):
    derivations.softmax_cross_entropy(logits, labels)
  with pytest.raises(ValueError, match=r"labels must have the logits' shape"):
    derivations.softmax_cross_entropy_grad(jnp.zeros(3), jnp.zeros(4))


# ---------------------------------------------------------------------------
# The two-sigmoid-layer regression network.
# ---------------------------------------------------------------------------


def _mlp_setup():
  kp, kx = jax.random.split(jax.random.key(3))
  params = derivations.sigmoid_mlp_init(kp, d=4, d_h=5)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  params["b1"] = params["b1"] + 0.1  # non-zero biases exercise every path.
  params["b3"] = params["b3"] - 0.2
  x = jax.random.normal(kx, (4,), jnp.float64)
  return params, x, jnp.array(1.5)


def test_sigmoid_mlp_deltas_and_gradients_match_autodiff_and_fd():
  with jax.enable_x64(True):
    params, x, y = _mlp_setup()
    loss, grads, deltas = derivations.sigmoid_mlp_backward(params, x, y)
    np.testing.assert_allclose(
      loss, derivations.sigmoid_mlp_loss(params, x, y), rtol=1e-14
    )
    auto = jax.jit(jax.grad(derivations.sigmoid_mlp_loss))(params, x, y)
    assert gradcheck.max_relative_error(grads, auto) < 1e-12
    err = gradcheck.check_gradients(
      jax.jit(derivations.sigmoid_mlp_loss),
      jax.jit(lambda p, x, y: derivations.sigmoid_mlp_backward(p, x, y)[1]),
      params,
      x,
      y,
    )
    assert err < 1e-6

    # The deltas are the gradients with respect to f, Z2 and Z1.
    def from_f(f):
      return (y - f) ** 2

    def from_z2(z2):
      return from_f((params["W3"] @ jax.nn.sigmoid(z2) + params["b3"])[0])

    def from_z1(z1):
      return from_z2(params["W2"] @ jax.nn.sigmoid(z1) + params["b2"])

    acts = derivations.sigmoid_mlp_forward(params, x)
    for delta, fn, name in (
      ("delta4", from_f, "f"),
      ("delta3", from_z2, "Z2"),
      ("delta2", from_z1, "Z1"),
    ):
      want = jax.grad(fn)(acts[name])
      np.testing.assert_allclose(deltas[delta], want, rtol=1e-12, atol=1e-15)
    # The biases' gradients are the deltas.
    np.testing.assert_allclose(grads["b2"], deltas["delta3"], rtol=1e-15)
    np.testing.assert_allclose(grads["b1"], deltas["delta2"], rtol=1e-15)


def test_sigmoid_mlp_one_sgd_step_lowers_the_loss():
  with jax.enable_x64(True):
    params, x, y = _mlp_setup()
    loss, grads, _ = derivations.sigmoid_mlp_backward(params, x, y)
    new = derivations.sgd_step(params, grads, 0.05)
    assert derivations.sigmoid_mlp_loss(new, x, y) < loss
    # First order: the decrease is about lr * ||grad||^2.
    sq_norm = sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))
    drop = loss - derivations.sigmoid_mlp_loss(new, x, y)
    np.testing.assert_allclose(drop, 0.05 * sq_norm, rtol=0.2)
    # A step along +grad (the sign error of ascending) raises it.
    up = derivations.sgd_step(params, jax.tree.map(jnp.negative, grads), 0.05)
    assert derivations.sigmoid_mlp_loss(up, x, y) > loss


def test_sigmoid_mlp_bad_input():
  params = derivations.sigmoid_mlp_init(jax.random.key(0), d=4, d_h=5)
  with pytest.raises(ValueError, match="x must have rank 1"):
    derivations.sigmoid_mlp_forward(params, jnp.ones((2, 4)))


# ---------------------------------------------------------------------------
# 3-D cross-correlation.
# ---------------------------------------------------------------------------

_DN3 = ("NCDHW", "OIDHW", "NCDHW")


def _lax_conv3d(x, k, strides, pads):
  """The oracle: lax's 3-D convolution, channels first, float64."""
  return jax.lax.conv_general_dilated(
    x[None],
    k,
    strides,
    [(p, p) for p in pads],
    dimension_numbers=_DN3,
    precision=jax.lax.Precision.HIGHEST,
  )[0]


@st.composite
def _conv3d_case(draw):
  spatial = [draw(st.integers(1, 6)) for _ in range(3)]
  pads = [draw(st.integers(0, 2)) for _ in range(3)]
  kernel = [
    draw(st.integers(1, min(3, n + 2 * p)))
    for n, p in zip(spatial, pads, strict=True)
  ]
  strides = [draw(st.integers(1, 3)) for _ in range(3)]
  c_in, c_out = draw(st.integers(1, 2)), draw(st.integers(1, 3))
  seed = draw(st.integers(0, 2**16))
  # Per-axis tuples, or one int for all axes when the draws agree.
  as_arg = lambda v: v[0] if len(set(v)) == 1 else tuple(v)  # noqa: E731
  return (
    (c_in, *spatial),
    (c_out, c_in, *kernel),
    as_arg(strides),
    as_arg(pads),
    seed,
  )


def _triple(v):
  return (v,) * 3 if isinstance(v, int) else v


def _conv3d_against_lax(x, k, dy, stride, padding):
  """Ours and lax's forward and input/kernel gradients, in one program."""
  strides, pads = _triple(stride), _triple(padding)
  z = derivations.conv3d_forward(x, k, stride=stride, padding=padding)
  grads = derivations.conv3d_backward(x, k, dy, stride=stride, padding=padding)
  want, vjp = jax.vjp(lambda x, k: _lax_conv3d(x, k, strides, pads), x, k)
  return z, grads, want, vjp(dy)


# Each example compiles a fresh program, so there are 6 of them,
# derandomised in CI; `test_conv3d_*` below pin strides and paddings too.
@settings(max_examples=6)
@given(_conv3d_case())
def test_conv3d_forward_and_backward_match_lax_conv(case):
  x_shape, k_shape, stride, padding, seed = case
  strides, pads = _triple(stride), _triple(padding)
  # The output shape follows the floor formula, with s and p.
  nhwc = derivations.conv_output_shape(
    (1, *x_shape[1:], x_shape[0]),
    (*k_shape[2:], k_shape[1], k_shape[0]),
    strides,
    pads,
  )
  z_shape = (nhwc[-1], *nhwc[1:-1])
  with jax.enable_x64(True):
    kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, x_shape, jnp.float64)
    k = jax.random.normal(kk, k_shape, jnp.float64)
    dy = jax.random.normal(kg, z_shape, jnp.float64)
    # One compiled program per example: eager ops would compile each op.
    run = jax.jit(_conv3d_against_lax, static_argnums=(3, 4))
    z, (dx, dk), want, (want_dx, want_dk) = run(x, k, dy, stride, padding)
    assert z.dtype == jnp.float64 and z.shape == want.shape == z_shape
    np.testing.assert_allclose(z, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dk, want_dk, rtol=1e-12, atol=1e-12)


def test_conv3d_forward_is_the_sum_formula_written_as_loops():
  # Z[p, i, j, q] = sum_{p', m, n, r} K[p, p', m, n, r] I[p', i+m, j+n, q+r].
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 3, 5))
  k = rng.standard_normal((3, 2, 2, 2, 3))
  want = np.zeros((3, 3, 2, 3))
  for p, i, j, q in np.ndindex(*want.shape):
    for p_, m, n, r in np.ndindex(2, 2, 2, 3):
      want[p, i, j, q] += k[p, p_, m, n, r] * x[p_, i + m, j + n, q + r]
  with jax.enable_x64(True):
    got = derivations.conv3d_forward(jnp.asarray(x), jnp.asarray(k))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _conv3d_head(params, target, stride, padding):
  z = derivations.conv3d_forward(
    params["x"], params["k"], stride=stride, padding=padding
  )
  return jnp.sum(jnp.sin(z) * target)


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), ((1, 3, 2), 2)])
def test_conv3d_backward_matches_autodiff_and_finite_differences(
  stride, padding
):
  with jax.enable_x64(True):
    kx, kk, kt = jax.random.split(jax.random.key(4), 3)
    params = {
      "x": jax.random.normal(kx, (2, 4, 5, 3), jnp.float64),
      "k": jax.random.normal(kk, (2, 2, 2, 3, 2), jnp.float64),
    }
    z = derivations.conv3d_forward(
      params["x"], params["k"], stride=stride, padding=padding
    )
    target = jax.random.normal(kt, z.shape, jnp.float64)

    def loss(p, target):
      return _conv3d_head(p, target, stride, padding)

    def hand(p, target):
      # dL/dZ of the head by hand, then the hand-derived conv backward.
      z = derivations.conv3d_forward(
        p["x"], p["k"], stride=stride, padding=padding
      )
      dx, dk = derivations.conv3d_backward(
        p["x"], p["k"], jnp.cos(z) * target, stride=stride, padding=padding
      )
      return {"x": dx, "k": dk}

    got = jax.jit(hand)(params, target)
    auto = jax.jit(jax.grad(loss))(params, target)
    assert gradcheck.max_relative_error(got, auto) < 1e-12
    err = gradcheck.check_gradients(jax.jit(loss), hand, params, target)
    assert err < 1e-6


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv3d_input_gradient_is_full_correlation_with_flipped_kernel(
  stride,
):
  # The textbook form: dL/dx is the stride-dilated dL/dZ, padded by k - 1
  # (plus the rows the windows never reached), correlated with the kernel
  # flipped in space and with its channel axes swapped; then the padding
  # is cropped. Along D, 6 + 2 * 1 - 3 = 5: stride 2 leaves the last
  # (padding) row unread, stride 3 the last two, one of them in x.
  with jax.enable_x64(True):
    kx, kk, kg = jax.random.split(jax.random.key(5), 3)
    x = jax.random.normal(kx, (2, 6, 7, 5), jnp.float64)
    k = jax.random.normal(kk, (3, 2, 3, 2, 3), jnp.float64)
    pad = 1
    z = derivations.conv3d_forward(x, k, stride=stride, padding=pad)
    dy = jax.random.normal(kg, z.shape, jnp.float64)
    dx, _ = derivations.conv3d_backward(x, k, dy, stride=stride, padding=pad)
    flipped = jnp.flip(k, axis=(2, 3, 4)).transpose(1, 0, 2, 3, 4)
    edges = []
    for n, kk_, o in zip(x.shape[1:], k.shape[2:], z.shape[1:], strict=True):
      unread = n + 2 * pad - kk_ - (o - 1) * stride
      edges.append((kk_ - 1, kk_ - 1 + unread))
    full = jax.lax.conv_general_dilated(
      dy[None],
      flipped,
      (1, 1, 1),
      edges,
      lhs_dilation=(stride,) * 3,
      dimension_numbers=_DN3,
      precision=jax.lax.Precision.HIGHEST,
    )[0]
    want = full[:, pad:-pad, pad:-pad, pad:-pad]
    np.testing.assert_allclose(dx, want, rtol=1e-12, atol=1e-12)
    if stride == 3:  # No window reads x's last depth row: zero gradient.
      np.testing.assert_array_equal(dx[:, -1], 0.0)
      assert np.abs(np.asarray(dx[:, -2])).max() > 0.1


def test_conv3d_jits_batches_with_vmap_and_promotes_dtypes():
  kx, kk = jax.random.split(jax.random.key(6))
  xs = jax.random.normal(kx, (3, 2, 5, 5, 5))
  k = jax.random.normal(kk, (4, 2, 3, 3, 3))
  fwd = jax.jit(lambda x, k: derivations.conv3d_forward(x, k, stride=2))
  batched = jax.vmap(fwd, in_axes=(0, None))(xs, k)
  for x, z in zip(xs, batched, strict=True):
    np.testing.assert_allclose(
      z, derivations.conv3d_forward(x, k, stride=2), rtol=1e-5, atol=1e-5
    )
  assert batched.shape == (3, 4, 2, 2, 2) and batched.dtype == jnp.float32
  with jax.enable_x64(True):
    z = derivations.conv3d_forward(xs[0], k.astype(jnp.float64))
    dx, dk = derivations.conv3d_backward(
      xs[0], k, jnp.ones(z.shape, jnp.float64)
    )
    assert z.dtype == dx.dtype == dk.dtype == jnp.float64
    assert dx.shape == xs[0].shape and dk.shape == k.shape


def test_conv3d_bad_input():
  x, k = jnp.ones((2, 4, 4, 4)), jnp.ones((3, 2, 3, 3, 3))
  fwd, bwd = derivations.conv3d_forward, derivations.conv3d_backward
  with pytest.raises(ValueError, match=r"x must be \[C_in, D, H, W\]"):
    fwd(jnp.ones((1, 2, 4, 4, 4)), k)
  with pytest.raises(ValueError, match=r"k must be \[C_out, C_in, kd"):
    fwd(x, jnp.ones((3, 2, 3, 3)))
  with pytest.raises(ValueError, match=r"input channels .* C_in = 2"):
    fwd(x, jnp.ones((3, 1, 3, 3, 3)))
  with pytest.raises(ValueError, match="no empty axis"):
    fwd(jnp.ones((2, 0, 4, 4)), k)
  with pytest.raises(ValueError, match="stride must be an int >= 1, got 0"):
    fwd(x, k, stride=0)
  with pytest.raises(ValueError, match=r"stride\[2\] must be an int >= 1"):
    fwd(x, k, stride=(1, 1, -2))
  with pytest.raises(ValueError, match=r"stride must be an int or 3 ints"):
    fwd(x, k, stride=(1, 2))
  with pytest.raises(TypeError, match="stride must be an int"):
    fwd(x, k, stride=1.5)
  with pytest.raises(ValueError, match="padding must be an int >= 0, got -1"):
    fwd(x, k, padding=-1)
  with pytest.raises(ValueError, match=r"kernel's height 5 exceeds .* = 4"):
    fwd(x, jnp.ones((3, 2, 3, 5, 3)))
  assert fwd(x, jnp.ones((3, 2, 3, 5, 3)), padding=1).shape == (3, 4, 2, 4)
  with pytest.raises(TypeError, match="x must have a floating-point dtype"):
    fwd(jnp.ones((2, 4, 4, 4), jnp.int32), k)
  with pytest.raises(ValueError, match=r"dy must be shaped .* \(3, 2, 2, 2\)"):
    bwd(x, k, jnp.ones((3, 2, 2, 3)))
  with pytest.raises(TypeError, match="dy must have a floating-point dtype"):
    bwd(x, k, jnp.ones((3, 2, 2, 2), jnp.int32))
  with pytest.raises(ValueError, match="padding must be an int >= 0"):
    bwd(x, k, jnp.ones((3, 2, 2, 2)), padding=-1)


@pytest.mark.parametrize(
  ("learning_rate", "error"),
  [
    (-0.05, ValueError),  # Ascends: the sign error a step must not make.
    (0.0, ValueError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    ("0.1", TypeError),
    (None, TypeError),
    (jnp.array(-0.1), ValueError),
  ],
)
def test_sgd_step_refuses_step_sizes_outside_their_domain(learning_rate, error):
  params = {"w": jnp.ones(3)}
  with pytest.raises(error, match="learning_rate must be a finite number > 0"):
    derivations.sgd_step(params, params, learning_rate)


def test_sgd_step_refuses_grads_unlike_params_and_takes_traced_rates():
  params = {"w": jnp.ones(3), "b": jnp.zeros(())}
  with pytest.raises(ValueError, match="structure of params"):
    derivations.sgd_step(params, {"w": jnp.ones(3)}, 0.1)
  with pytest.raises(ValueError, match=r"shapes of params, got \(2,\)"):
    derivations.sgd_step(params, {"w": jnp.ones(2), "b": jnp.zeros(())}, 0.1)
  step = jax.jit(derivations.sgd_step)(params, params, jnp.float32(0.5))
  np.testing.assert_allclose(step["w"], 0.5)
  np.testing.assert_allclose(
    derivations.sgd_step(params, params, np.float32(0.25))["w"], 0.75
  )
