"""Tests for equivlab.rl.tabular: tabular Q-learning and epsilon-greedy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.rl import envs, tabular

# The chain's moves are -1 and +1; the table's columns are 0 and 1.
_COLUMN = {-1: 0, 1: 1}


class QLearningUpdateTest(chex.TestCase):
  def test_hand_computed_update(self):
    q = jnp.zeros((6, 2))
    for s, a, r, s_next in [(3, -1, -1, 2), (2, 1, -1, 3), (3, 1, -1, 4)]:
      q = tabular.q_learning_update(q, s, _COLUMN[a], r, 1.0, s_next, 0.5)
    np.testing.assert_array_equal(q[3, _COLUMN[-1]], -0.5)
    np.testing.assert_array_equal(q[2, _COLUMN[1]], -0.5)
    np.testing.assert_array_equal(q[3, _COLUMN[1]], -0.5)
    # Nothing else moved.
    self.assertEqual(int(jnp.sum(q != 0)), 3)

  def test_uses_max_of_next_state(self):
    q = jnp.array([[0.0, 0.0], [2.0, 6.0]])
    q = tabular.q_learning_update(q, 0, 1, 1.0, 0.5, 1, 0.5)
    # 0 + 0.5 * (1 + 0.5 * 6 - 0) = 2.
    np.testing.assert_allclose(q[0, 1], 2.0)

  def test_learns_chain_values(self):
    # Random behaviour on the chain: Q(s, +1) -> -(distance to end).
    env, params = envs.make("ChainMDP", num_states=4)

    def body(carry, step_key):
      q, env_state, obs = carry
      act_key, env_key = jax.random.split(step_key)
      s = jnp.argmax(obs)
      a = jax.random.randint(act_key, (), 0, 2)
      out = envs.step(env_key, env, env_state, a, params)
      s_next = jnp.argmax(out.next_obs)
      discount = envs.bootstrap_discount(out.terminated, 1.0)
      q = tabular.q_learning_update(q, s, a, out.reward, discount, s_next, 0.2)
      return (q, out.state, out.obs), None

    obs, env_state = env.reset(jax.random.key(0), params)
    keys = jax.random.split(jax.random.key(1), 3000)
    (q, _, _), _ = jax.lax.scan(body, (jnp.zeros((4, 2)), env_state, obs), keys)
    np.testing.assert_allclose(q[:3, 1], [-3.0, -2.0, -1.0], atol=0.05)
    # Moving left from the wall at 0 stays at 0: one wasted step.
    np.testing.assert_allclose(q[0, 0], -4.0, atol=0.05)


class EpsilonGreedyTest(chex.TestCase):
  def test_zero_epsilon_is_greedy(self):
    q = jnp.array([0.1, 3.0, -1.0])
    keys = jax.random.split(jax.random.key(0), 50)
    actions = jax.vmap(tabular.epsilon_greedy, (0, None, None))(keys, q, 0.0)
    np.testing.assert_array_equal(actions, np.ones(50))

  def test_frequencies(self):
    q = jnp.array([0.0, 1.0, 0.0, 0.0])
    keys = jax.random.split(jax.random.key(1), 20_000)
    actions = jax.jit(jax.vmap(tabular.epsilon_greedy, (0, None, None)))(
      keys, q, 0.4
    )
    freq = np.bincount(np.asarray(actions), minlength=4) / actions.shape[0]
    np.testing.assert_allclose(
      freq, tabular.epsilon_greedy_probs(q, 0.4), atol=0.015
    )
    np.testing.assert_allclose(
      tabular.epsilon_greedy_probs(q, 0.4), [0.1, 0.7, 0.1, 0.1], atol=1e-6
    )

  def test_traced_epsilon(self):
    fn = jax.jit(tabular.epsilon_greedy)
    self.assertEqual(int(fn(jax.random.key(0), jnp.array([0.0, 1.0]), 0.0)), 1)

  def test_bad_epsilon(self):
    for eps in (-0.1, 1.5):
      with pytest.raises(ValueError, match=r"epsilon must lie in \[0, 1\]"):
        tabular.epsilon_greedy(jax.random.key(0), jnp.zeros(2), eps)
      with pytest.raises(ValueError, match=r"epsilon must lie in \[0, 1\]"):
        tabular.epsilon_greedy_probs(jnp.zeros(2), eps)
