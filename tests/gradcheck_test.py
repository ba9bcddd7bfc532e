"""Tests of the central finite-difference checker."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.fundamentals import gradcheck


def _quadratic(params, x):
  return jnp.sum(params["w"] ** 2 * x) + params["b"] ** 3


def test_matches_analytic_gradient_in_float64():
  with jax.enable_x64(True):
    params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(1.5)}
    x = jnp.array([3.0, 1.0, -2.0])
    numeric = gradcheck.finite_difference_grad(_quadratic, params, x)
    np.testing.assert_allclose(numeric["w"], 2 * params["w"] * x, rtol=1e-8)
    np.testing.assert_allclose(numeric["b"], 3 * 1.5**2, rtol=1e-8)
    err = gradcheck.check_gradients(_quadratic, jax.grad(_quadratic), params, x)
    assert err < 1e-8


def test_detects_a_wrong_gradient():
  with jax.enable_x64(True):
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(1.0)}
    x = jnp.array([1.0, 1.0])

    def wrong_grad(p, x):
      g = jax.grad(_quadratic)(p, x)
      return {"w": g["w"], "b": -g["b"]}  # the bias gradient's sign flipped.

    assert gradcheck.check_gradients(_quadratic, wrong_grad, params, x) > 1.0


def test_max_relative_error_is_zero_for_equal_trees_and_uses_floor():
  a = {"x": jnp.array([1.0, 0.0])}
  assert gradcheck.max_relative_error(a, a) == 0.0
  b = {"x": jnp.array([1.0, 1e-12])}
  assert gradcheck.max_relative_error(a, b) < 1e-3


def test_bad_input():
  with pytest.raises(ValueError, match="scalar"):
    gradcheck.finite_difference_grad(lambda p: p * 2, jnp.ones(3))
  with pytest.raises(ValueError, match="eps must be positive"):
    gradcheck.finite_difference_grad(jnp.sum, jnp.ones(3), eps=0.0)
  with pytest.raises(ValueError, match="structures differ"):
    gradcheck.max_relative_error({"a": 1.0}, {"b": 1.0})
  with pytest.raises(ValueError, match="shapes differ"):
    gradcheck.max_relative_error(jnp.ones(2), jnp.ones(3))
