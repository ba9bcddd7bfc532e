"""Tests for equivlab.rl.linear: the semi-gradient Q-learning step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from equivlab.fundamentals import gradcheck
from equivlab.rl import linear

# A hand-computed step: w, w-, the sample (s, a, r, s') and alpha.
_W = jnp.array([-1.0, 1.0, 1.0])
_W_TARGET = jnp.array([1.0, -1.0, -2.0])
_S, _A, _R, _S_NEXT = 2.0, -1.0, -1.0, 1.0
_ALPHA = 0.25


class LinearQTest(chex.TestCase):
  def test_features(self):
    np.testing.assert_array_equal(linear.chain_features(2, -1), [2, -1, 1])
    np.testing.assert_array_equal(
      linear.all_action_features(1), [[1, -1, 1], [1, 1, 1]]
    )

  def test_hand_computed_gradient_and_step(self):
    phi = linear.chain_features(_S, _A)
    w_new, grad = linear.semi_gradient_q_learning_update(
      _W, _W_TARGET, phi, _R, 1.0, linear.all_action_features(_S_NEXT), _ALPHA
    )
    # grad J = -2 * delta * phi with delta = 1, phi = [2, -1, 1].
    np.testing.assert_array_equal(grad, -2.0 * 1.0 * np.array([2.0, -1.0, 1.0]))
    np.testing.assert_array_equal(w_new, [0.0, 0.5, 1.5])

  def test_hand_computed_intermediate_values(self):
    # max_a' w- . [1, a', 1] = max(0, -2) = 0 at a' = -1; q(s, a; w) = -2.
    q_next = linear.q_values(_W_TARGET, linear.all_action_features(_S_NEXT))
    np.testing.assert_array_equal(q_next, [0.0, -2.0])
    q = linear.q_values(_W, linear.chain_features(_S, _A))
    np.testing.assert_array_equal(q, -2.0)
    loss = linear.semi_gradient_loss(
      _W, _W_TARGET, linear.chain_features(_S, _A), _R, 1.0,
      linear.all_action_features(_S_NEXT),
    )  # fmt: skip
    np.testing.assert_array_equal(loss, 1.0)

  def test_gradient_ignores_target_weights_and_matches_fd(self):
    phi = linear.chain_features(_S, _A)
    phi_next = linear.all_action_features(_S_NEXT)
    grad_target = jax.grad(linear.semi_gradient_loss, argnums=1)(
      _W, _W_TARGET, phi, _R, 1.0, phi_next
    )
    np.testing.assert_array_equal(grad_target, np.zeros(3))
    fn = lambda w: linear.semi_gradient_loss(
      w, _W_TARGET, phi, _R, 1.0, phi_next
    )
    err = gradcheck.check_gradients(
      fn, jax.grad(fn), jnp.array([-1.0, 1.0, 1.0], jnp.float32), eps=1e-2
    )
    self.assertLess(err, 1e-3)

  def test_step_lowers_the_loss(self):
    phi = linear.chain_features(_S, _A)
    phi_next = linear.all_action_features(_S_NEXT)
    w_new, _ = linear.semi_gradient_q_learning_update(
      _W, _W_TARGET, phi, _R, 1.0, phi_next, 0.05
    )
    before = linear.semi_gradient_loss(_W, _W_TARGET, phi, _R, 1.0, phi_next)
    after = linear.semi_gradient_loss(w_new, _W_TARGET, phi, _R, 1.0, phi_next)
    self.assertLess(float(after), float(before))
