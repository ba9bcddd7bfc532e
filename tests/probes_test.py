"""Tests of equivlab.probes (seed 004 2(c); seed 002 problem 1(3))."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import probes


class _TwoDense(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(3)(x))
    return nn.Dense(2)(x)


def test_layer_gradient_norms_hand_computed():
  grads = {
    "Dense_10": {"kernel": jnp.array([[3.0, 4.0]]), "bias": jnp.ones(2)},
    "Dense_2": {"kernel": jnp.array([[1.0], [2.0], [2.0]])},
    "block": {"Conv_0": {"kernel": jnp.full((2, 2), 0.5)}},
  }
  norms = probes.layer_gradient_norms(grads)
  assert list(norms) == ["Dense_2", "Dense_10", "block/Conv_0"]
  np.testing.assert_allclose(
    [float(v) for v in norms.values()], [3.0, 5.0, 1.0], rtol=1e-6
  )
  with_bias = probes.layer_gradient_norms(grads, leaf=None)
  np.testing.assert_allclose(
    float(with_bias["Dense_10"]), np.sqrt(27.0), rtol=1e-6
  )


def test_layer_gradient_norms_jits_on_real_grads():
  model = _TwoDense()
  x = jnp.ones((4, 5))
  params = model.init(jax.random.key(0), x)["params"]

  @jax.jit
  def norms(params):
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x)))(params)
    return probes.layer_gradient_norms(grads)

  out = norms(params)
  assert list(out) == ["Dense_0", "Dense_1"]
  assert all(float(v) > 0 for v in out.values())


def test_layer_gradient_norms_rejects_empty():
  with pytest.raises(ValueError, match="non-empty mapping"):
    probes.layer_gradient_norms({})


def test_layer_gradient_norms_rejects_missing_leaf():
  with pytest.raises(ValueError, match="no parameter named 'kernel'"):
    probes.layer_gradient_norms({"BatchNorm_0": {"scale": jnp.ones(2)}})


def test_intermediates_in_call_order():
  model = _TwoDense()
  x = jnp.ones((4, 5))
  variables = model.init(jax.random.key(0), x)
  out = probes.intermediates(model, variables, x)
  assert list(out) == ["Dense_0", "Dense_1", "output"]
  assert out["Dense_0"].shape == (4, 3)
  np.testing.assert_allclose(
    out["output"], model.apply(variables, x), rtol=1e-6
  )


def test_shift_error_zero_for_a_roll_and_finds_the_shift():
  f_x = jax.random.normal(jax.random.key(1), (2, 6, 5, 3))
  error, t = probes.shift_equivariance_error(
    f_x, jnp.roll(f_x, (2, 4), axis=(1, 2))
  )
  np.testing.assert_allclose(float(error), 0.0, atol=1e-6)
  np.testing.assert_array_equal(t, [2, 4])


def test_shift_error_given_output_shift_hand_computed():
  f_x = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0, 0].set(1.0)
  f_shifted = jnp.zeros((1, 2, 2, 1)).at[0, 0, 1, 0].set(1.0)
  error, _ = probes.shift_equivariance_error(f_x, f_shifted, (0, 0))
  np.testing.assert_allclose(float(error), np.sqrt(2.0), rtol=1e-6)
  error, _ = probes.shift_equivariance_error(f_x, f_shifted, (0, 1))
  np.testing.assert_allclose(float(error), 0.0, atol=1e-7)


def test_shift_error_of_vectors_is_invariance_error():
  f_x = jnp.array([[3.0, 4.0]])
  error, t = probes.shift_equivariance_error(f_x, jnp.array([[3.0, 5.0]]))
  np.testing.assert_allclose(float(error), 0.2, rtol=1e-6)
  np.testing.assert_array_equal(t, [0, 0])


def test_shift_error_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="one shape"):
    probes.shift_equivariance_error(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 4, 4)))


def test_shift_error_rejects_rank_three():
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    probes.shift_equivariance_error(jnp.ones((2, 4, 4)), jnp.ones((2, 4, 4)))
