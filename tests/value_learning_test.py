"""Tests for equivlab.rl.value_learning, with rlax as the oracle."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
from absl.testing import parameterized

from equivlab.rl import value_learning as vl


def _batch(key, batch=7, num_actions=4):
  keys = jax.random.split(key, 6)
  return dict(
    q_tm1=jax.random.normal(keys[0], (batch, num_actions)),
    a_tm1=jax.random.randint(keys[1], (batch,), 0, num_actions),
    r_t=jax.random.normal(keys[2], (batch,)),
    discount_t=jax.random.uniform(keys[3], (batch,)),
    q_t=jax.random.normal(keys[4], (batch, num_actions)),
    q_t_selector=jax.random.normal(keys[5], (batch, num_actions)),
  )


class QLearningTest(chex.TestCase):
  def test_hand_computed(self):
    # r + discount * max q_t - q_tm1[a] = 1 + 0.5 * 4 - 2.
    td = vl.q_learning(
      jnp.array([1.0, 2.0]),
      jnp.array(1),
      jnp.array(1.0),
      jnp.array(0.5),
      jnp.array([4.0, -3.0]),
    )
    np.testing.assert_allclose(td, 1.0, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_rlax(self):
    b = _batch(jax.random.key(0))
    ours = self.variant(jax.vmap(vl.q_learning))(
      b["q_tm1"], b["a_tm1"], b["r_t"], b["discount_t"], b["q_t"]
    )
    theirs = jax.vmap(rlax.q_learning)(
      b["q_tm1"], b["a_tm1"], b["r_t"], b["discount_t"], b["q_t"]
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)

  def test_terminal_discount_drops_bootstrap(self):
    td = vl.q_learning(
      jnp.array([0.5, 0.0]),
      jnp.array(0),
      jnp.array(2.0),
      jnp.array(0.0),
      jnp.array([100.0, 50.0]),
    )
    np.testing.assert_allclose(td, 1.5, atol=1e-6)

  @parameterized.parameters(True, False)
  def test_stop_target_gradients_matches_rlax(self, stop):
    b = _batch(jax.random.key(1), batch=1)
    args = [b[k][0] for k in ("q_tm1", "a_tm1", "r_t", "discount_t", "q_t")]

    def loss(fn, q_tm1, q_t):
      return fn(q_tm1, args[1], args[2], args[3], q_t, stop) ** 2

    ours = jax.grad(lambda a, c: loss(vl.q_learning, a, c), (0, 1))(
      args[0], args[4]
    )
    theirs = jax.grad(lambda a, c: loss(rlax.q_learning, a, c), (0, 1))(
      args[0], args[4]
    )
    chex.assert_trees_all_close(ours, theirs, atol=1e-6)
    if stop:
      np.testing.assert_array_equal(ours[1], np.zeros(4))
    else:
      self.assertGreater(float(jnp.abs(ours[1]).sum()), 0.0)


class DoubleQLearningTest(chex.TestCase):
  def test_decoy_values_catch_max_instead_of_argmax(self):
    # The selector picks action 0; the value network's max (10, action 1) and
    # the selector's max (1) are decoys. Right: 1 + 0.5 * 2 - 3 = -1.
    # max of q_t_value would give 3; max of the selector would give -1.5.
    td = vl.double_q_learning(
      jnp.array([0.0, 3.0]),
      jnp.array(1),
      jnp.array(1.0),
      jnp.array(0.5),
      jnp.array([2.0, 10.0, -1.0]),
      jnp.array([1.0, 0.0, 0.5]),
    )
    np.testing.assert_allclose(td, -1.0, atol=1e-6)
    theirs = rlax.double_q_learning(
      jnp.array([0.0, 3.0]),
      jnp.array(1),
      jnp.array(1.0),
      jnp.array(0.5),
      jnp.array([2.0, 10.0, -1.0]),
      jnp.array([1.0, 0.0, 0.5]),
    )
    np.testing.assert_allclose(td, theirs, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_rlax(self):
    b = _batch(jax.random.key(2))
    args = (
      b["q_tm1"],
      b["a_tm1"],
      b["r_t"],
      b["discount_t"],
      b["q_t"],
      b["q_t_selector"],
    )
    ours = self.variant(jax.vmap(vl.double_q_learning))(*args)
    theirs = jax.vmap(rlax.double_q_learning)(*args)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)

  def test_equals_q_learning_when_networks_agree(self):
    b = _batch(jax.random.key(3))
    double = jax.vmap(vl.double_q_learning)(
      b["q_tm1"], b["a_tm1"], b["r_t"], b["discount_t"], b["q_t"], b["q_t"]
    )
    single = jax.vmap(vl.q_learning)(
      b["q_tm1"], b["a_tm1"], b["r_t"], b["discount_t"], b["q_t"]
    )
    np.testing.assert_allclose(double, single, atol=1e-6)

  def test_target_gradients_stopped(self):
    grads = jax.grad(
      lambda qv, qs: vl.double_q_learning(
        jnp.array([0.0, 1.0]),
        jnp.array(0),
        jnp.array(1.0),
        jnp.array(0.9),
        qv,
        qs,
      ),
      (0, 1),
    )(jnp.array([1.0, 2.0]), jnp.array([3.0, 0.0]))
    np.testing.assert_array_equal(grads[0], np.zeros(2))
    np.testing.assert_array_equal(grads[1], np.zeros(2))

  def test_rank_mismatch_raises(self):
    with pytest.raises(AssertionError):
      vl.double_q_learning(
        jnp.zeros((2,)),
        jnp.array(0),
        jnp.array(1.0),
        jnp.array(0.9),
        jnp.zeros((2, 1)),
        jnp.zeros((2,)),
      )


class LossTest(chex.TestCase):
  def test_huber_values_and_gradients(self):
    x = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.0])
    # 0.5 x^2 inside [-1, 1]; 0.5 + (|x| - 1) outside.
    expected = np.array([2.5, 0.5, 0.125, 0.0, 0.03125, 0.5, 1.5])
    np.testing.assert_allclose(vl.huber_loss(x), expected, atol=1e-6)
    grads = jax.vmap(jax.grad(vl.huber_loss))(x)
    np.testing.assert_allclose(
      grads, [-1.0, -1.0, -0.5, 0.0, 0.25, 1.0, 1.0], atol=1e-6
    )
    np.testing.assert_allclose(
      vl.huber_loss(x), rlax.huber_loss(x, 1.0), atol=1e-6
    )

  def test_huber_delta(self):
    x = jnp.linspace(-5.0, 5.0, 21)
    np.testing.assert_allclose(
      vl.huber_loss(x, 2.0), rlax.huber_loss(x, 2.0), atol=1e-5
    )
    np.testing.assert_allclose(
      jax.vmap(jax.grad(lambda v: vl.huber_loss(v, 2.0)))(x),
      np.clip(np.asarray(x), -2.0, 2.0),
      atol=1e-6,
    )

  def test_huber_bad_delta(self):
    with pytest.raises(ValueError, match="delta > 0"):
      vl.huber_loss(jnp.ones(3), 0.0)

  def test_l2(self):
    x = jnp.array([-2.0, 0.5, 3.0])
    np.testing.assert_allclose(vl.l2_loss(x), [2.0, 0.125, 4.5], atol=1e-6)
    np.testing.assert_allclose(vl.l2_loss(x), rlax.l2_loss(x), atol=1e-6)
    np.testing.assert_allclose(
      vl.l2_loss(x, jnp.ones(3)), rlax.l2_loss(x, jnp.ones(3)), atol=1e-6
    )
    np.testing.assert_allclose(jax.grad(lambda v: vl.l2_loss(v))(2.0), 2.0)


class NStepTest(chex.TestCase):
  def test_hand_computed_two_step(self):
    r = jnp.array([1.0, 2.0, 3.0])
    d = jnp.array([0.5, 0.0, 0.5])
    v = jnp.array([10.0, 20.0, 30.0])
    # G0 = 1 + .5 (2 + 0 * 20) = 2; G1 = 2 + 0 = 2; G2 = 3 + .5 * 30 = 18.
    np.testing.assert_allclose(
      vl.n_step_bootstrapped_returns(r, d, v, 2), [2.0, 2.0, 18.0], atol=1e-6
    )

  @parameterized.parameters(1, 2, 3, 5, 9)
  def test_matches_rlax(self, n):
    keys = jax.random.split(jax.random.key(n), 3)
    r = jax.random.normal(keys[0], (6,))
    d = jax.random.uniform(keys[1], (6,))
    v = jax.random.normal(keys[2], (6,))
    np.testing.assert_allclose(
      vl.n_step_bootstrapped_returns(r, d, v, n),
      rlax.n_step_bootstrapped_returns(r, d, v, n),
      rtol=1e-5,
      atol=1e-6,
    )

  def test_one_step_is_td_target(self):
    r = jnp.array([1.0, -1.0])
    d = jnp.array([0.9, 0.0])
    v = jnp.array([2.0, 5.0])
    np.testing.assert_allclose(
      vl.n_step_bootstrapped_returns(r, d, v, 1), r + d * v, atol=1e-6
    )

  @parameterized.parameters(0, -1, 1.5)
  def test_bad_n(self, n):
    with pytest.raises(ValueError, match="n >= 1"):
      vl.n_step_bootstrapped_returns(jnp.ones(3), jnp.ones(3), jnp.ones(3), n)
