"""Tests of equivlab.rnn.esn: reservoir scaling and the two readouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import rnn
from equivlab.rnn import esn


def test_reservoir_has_the_requested_spectral_radius():
  for radius, density in ((0.5, 1.0), (1.2, 0.3)):
    params = esn.init_esn(
      jax.random.key(0), 3, 40, spectral_radius=radius, density=density
    )
    assert params["W"].shape == (40, 40)
    assert params["W_in"].shape == (40, 3)
    np.testing.assert_allclose(
      esn.compute_spectral_radius(params["W"]), radius, rtol=1e-5
    )


def test_ridge_readout_solves_the_normal_equations():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(50, 6)).astype(np.float32)
  true_v = rng.normal(size=(2, 7)).astype(np.float32)
  targets = feats @ true_v[:, :6].T + true_v[:, 6][None, :]
  v = esn.ridge_readout(jnp.asarray(feats), jnp.asarray(targets), l2=0.0)
  np.testing.assert_allclose(v, true_v, rtol=1e-3, atol=1e-4)
  # With a penalty: (X^T X + l2 I) V^T = X^T Y, checked in float64 NumPy.
  v = np.asarray(esn.ridge_readout(jnp.asarray(feats), targets, l2=2.0))
  x = np.concatenate([feats, np.ones((50, 1))], axis=1).astype(np.float64)
  lhs = (x.T @ x + 2.0 * np.eye(7)) @ v.T.astype(np.float64)
  np.testing.assert_allclose(lhs, x.T @ targets, rtol=1e-3, atol=1e-3)


def test_reservoir_remembers_a_short_delay_with_both_readouts():
  # Recall the input from 2 steps back: a fading-memory task ESNs solve.
  key = jax.random.key(1)
  params = esn.init_esn(key, 4, 60, spectral_radius=0.9, input_scale=0.5)
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 4, size=(400, 6))
  xs = np.eye(4, dtype=np.float32)[tokens]
  last, states = jax.jit(esn.esn_states)(params, xs)
  assert states.shape == (400, 6, 60)
  np.testing.assert_allclose(last, states[:, -1])
  labels = tokens[:, -3]
  train, test = slice(0, 300), slice(300, 400)
  ridge = esn.ridge_readout(last[train], np.eye(4)[labels[train]], l2=1e-3)
  pred = np.argmax(esn.readout_apply(ridge, last[test]), axis=1)
  assert np.mean(pred == labels[test]) > 0.9
  readout, losses = esn.gradient_readout(
    key, last[train], labels[train], 4, num_steps=300, learning_rate=5e-2
  )
  assert losses[-1] < 0.5 * losses[0]
  pred = np.argmax(esn.readout_apply(readout, last[test]), axis=1)
  assert np.mean(pred == labels[test]) > 0.9


def test_rejects_a_non_positive_radius():
  with pytest.raises(ValueError, match=r"spectral_radius must be positive"):
    esn.init_esn(jax.random.key(0), 2, 5, spectral_radius=0.0)


def test_rejects_a_leak_out_of_range():
  with pytest.raises(ValueError, match=r"density and leak"):
    esn.init_esn(jax.random.key(0), 2, 5, leak=1.5)


def test_rejects_mismatched_readout_data():
  with pytest.raises(ValueError, match=r"same M, got 4 and 3"):
    esn.ridge_readout(jnp.zeros((4, 2)), jnp.zeros((3, 1)))


def test_rejects_float_labels_for_the_gradient_readout():
  with pytest.raises(ValueError, match=r"labels must be integers"):
    esn.gradient_readout(jax.random.key(0), jnp.zeros((4, 2)), jnp.zeros(4), 2)


def test_rejects_labels_outside_the_classes_for_the_gradient_readout():
  key, feats = jax.random.key(0), jnp.zeros((4, 2))
  with pytest.raises(
    ValueError, match=r"labels must lie in \[0, 2\), got 2 at"
  ):
    esn.gradient_readout(key, feats, jnp.array([0, 1, 2, 0]), 2)
  with pytest.raises(ValueError, match=r"labels must be \[M\] = \(4,\)"):
    esn.gradient_readout(key, feats, jnp.array([0, 1]), 2)
  with pytest.raises(ValueError, match=r"num_steps must be an int >= 1"):
    esn.gradient_readout(key, feats, jnp.zeros(4, jnp.int32), 2, num_steps=0)


def test_rejects_reservoir_sizes_and_penalties_of_the_wrong_kind():
  with pytest.raises(ValueError, match=r"reservoir_size must be an int >= 1"):
    esn.init_esn(jax.random.key(0), 2, 0)
  with pytest.raises(TypeError, match=r"input_size must be an int >= 1"):
    esn.init_esn(jax.random.key(0), 2.0, 5)
  with pytest.raises(ValueError, match=r"spectral_radius must be a finite"):
    esn.init_esn(jax.random.key(0), 2, 5, spectral_radius=float("nan"))
  with pytest.raises(TypeError, match=r"l2 must be a finite number"):
    esn.ridge_readout(jnp.zeros((4, 2)), jnp.zeros((4, 1)), l2="big")


def test_the_rnn_package_reexports_the_esn_functions():
  assert rnn.init_esn is esn.init_esn
  assert rnn.ridge_readout is esn.ridge_readout
  assert rnn.esn is esn


@pytest.mark.parametrize(
  ("alias", "expected"), [("bf16", jnp.bfloat16), ("float32", jnp.float32)]
)
def test_init_esn_takes_dtype_names(alias, expected):
  params = esn.init_esn(jax.random.key(0), 2, 5, dtype=alias)
  assert params["W"].dtype == expected and params["leak"].dtype == expected


@pytest.mark.parametrize("dtype", ["int32", jnp.int8, "nonsense"])
def test_init_esn_refuses_non_float_dtypes(dtype):
  with pytest.raises(TypeError, match="dtype must be a float dtype"):
    esn.init_esn(jax.random.key(0), 2, 5, dtype=dtype)
