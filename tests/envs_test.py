"""Tests for equivlab.rl.envs: the chain MDP, probes, gymnax, truncation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.rl import envs


class ChainMDPTest(chex.TestCase):
  def test_chain_moves_and_rewards(self):
    env, params = envs.make("ChainMDP", num_states=6)
    state = envs.ChainState(position=jnp.array(3), time=0)
    key = jax.random.key(0)
    # (3, -1) -> 2 and (3, +1) -> 4, each with reward -1.
    out = envs.step(key, env, state, 0, params)
    self.assertEqual(int(jnp.argmax(out.next_obs)), 2)
    self.assertEqual(float(out.reward), -1.0)
    out = envs.step(key, env, state, 1, params)
    self.assertEqual(int(jnp.argmax(out.next_obs)), 4)
    self.assertFalse(bool(out.terminated))

  def test_terminal_end_and_reset(self):
    env, params = envs.make("ChainMDP", num_states=3)
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(obs, [1.0, 0.0, 0.0])
    # The left end is a wall.
    out = envs.step(jax.random.key(1), env, state, 0, params)
    np.testing.assert_array_equal(out.next_obs, [1.0, 0.0, 0.0])
    out = envs.step(jax.random.key(2), env, out.state, 1, params)
    out = envs.step(jax.random.key(3), env, out.state, 1, params)
    self.assertTrue(bool(out.terminated))
    self.assertFalse(bool(out.truncated))
    np.testing.assert_array_equal(out.next_obs, [0.0, 0.0, 1.0])
    # Auto-reset: the observation to act on is the start again.
    np.testing.assert_array_equal(out.obs, [1.0, 0.0, 0.0])

  def test_bad_num_states(self):
    with pytest.raises(ValueError, match="num_states >= 2"):
      envs.make("ChainMDP", num_states=1)


class ProbeTest(chex.TestCase):
  def test_two_step_rewards(self):
    env, params = envs.make("Probe-two_step")
    obs, state = env.reset(jax.random.key(0), params)
    np.testing.assert_array_equal(obs, [1.0, 0.0])
    out = envs.step(jax.random.key(1), env, state, 0, params)
    self.assertEqual(float(out.reward), 0.0)
    self.assertFalse(bool(out.done))
    np.testing.assert_array_equal(out.obs, [0.0, 1.0])
    out = envs.step(jax.random.key(2), env, out.state, 1, params)
    self.assertEqual(float(out.reward), 1.0)
    self.assertTrue(bool(out.terminated))

  def test_action_reward(self):
    env, params = envs.make("Probe-action_reward")
    _, state = env.reset(jax.random.key(0), params)
    rewards = [
      float(envs.step(jax.random.key(1), env, state, a, params).reward)
      for a in (0, 1)
    ]
    self.assertEqual(rewards, [-1.0, 1.0])

  def test_unknown_kind(self):
    with pytest.raises(ValueError, match="ProbeEnv kind"):
      envs.ProbeEnv("nope")


class MakeTest(chex.TestCase):
  def test_cartpole(self):
    env, params = envs.make("CartPole-v1")
    self.assertEqual(envs.num_actions(env, params), 2)
    self.assertEqual(params.max_steps_in_episode, 500)

  def test_unknown_env(self):
    with pytest.raises(ValueError, match="Unknown environment 'NoSuchEnv-v0'"):
      envs.make("NoSuchEnv-v0")

  def test_continuous_action_space(self):
    with pytest.raises(ValueError, match="discrete"):
      envs.make("Pendulum-v1")

  def test_available_lists_both(self):
    names = envs.available_envs()
    self.assertIn("ChainMDP", names)
    self.assertIn("CartPole-v1", names)


class TruncationTest(chex.TestCase):
  """A time-limit cut bootstraps; a failure does not (Pardo et al., 2018)."""

  def test_cartpole_truncation_bootstraps(self):
    env, params = envs.make("CartPole-v1")
    params = params.replace(max_steps_in_episode=3)
    obs, state = env.reset(jax.random.key(0), params)
    out = None
    for t in range(3):
      out = envs.step(jax.random.key(t + 1), env, state, t % 2, params)
      state = out.state
    self.assertTrue(bool(out.truncated))
    self.assertFalse(bool(out.terminated))
    # The bootstrap observation is the real last one, not the reset one.
    self.assertFalse(np.allclose(out.next_obs, out.obs))
    np.testing.assert_allclose(
      envs.bootstrap_discount(out.terminated, 0.9), 0.9, rtol=1e-6
    )

  def test_cartpole_failure_cuts_bootstrap(self):
    env, params = envs.make("CartPole-v1")
    _, state = env.reset(jax.random.key(0), params)
    step = jax.jit(lambda k, s: envs.step(k, env, s, 1, params))
    for t in range(200):
      out = step(jax.random.key(t), state)
      state = out.state
      if bool(out.done):
        break
    self.assertTrue(bool(out.terminated))
    self.assertFalse(bool(out.truncated))
    # The pole fell: |theta| beyond 12 degrees in the final observation.
    self.assertGreater(abs(float(out.next_obs[2])), 12 * 2 * np.pi / 360)
    self.assertEqual(float(envs.bootstrap_discount(out.terminated, 0.9)), 0.0)

  def test_auto_reset_is_the_reset_half_of_step(self):
    env, params = envs.make("CartPole-v1")
    _, state = env.reset(jax.random.key(0), params)
    reset_key = jax.random.key(7)
    reset = env.reset_env(reset_key, params)
    for t in range(40):  # Until the pole falls and the episode restarts.
      key = jax.random.key(100 + t)
      want = envs.step(key, env, state, 1, params, reset_key=reset_key)
      got = envs.auto_reset(envs.transition(key, env, state, 1, params), reset)
      chex.assert_trees_all_equal(got, want)
      state = want.state
      if bool(want.done):
        break
    self.assertTrue(bool(want.done))
    chex.assert_trees_all_equal(want.obs, reset[0])
    self.assertFalse(np.array_equal(want.next_obs, reset[0]))

  def test_reset_batch_resets_every_key(self):
    env, params = envs.make("CartPole-v1")
    keys = jax.random.split(jax.random.key(3), (5, 4))
    obs, state = envs.reset_batch(env, keys, params)
    chex.assert_shape(obs, (5, 4, 4))
    chex.assert_shape(state.x, (5, 4))
    one_obs, _ = env.reset_env(keys[2, 1], params)
    np.testing.assert_allclose(obs[2, 1], one_obs, rtol=1e-6)
    raw = jax.random.split(jax.random.PRNGKey(3), 6)  # uint32 [6, 2] keys
    self.assertEqual(envs.reset_batch(env, raw, params)[0].shape, (6, 4))

  def test_discount_vectorised(self):
    np.testing.assert_allclose(
      envs.bootstrap_discount(jnp.array([True, False]), 0.99),
      [0.0, 0.99],
      rtol=1e-6,
    )
