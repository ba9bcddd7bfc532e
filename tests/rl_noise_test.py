"""Tests for the DQN loop's bulk random numbers and the pieces built on them.

Each fast path is checked against the slow path it replaces: the bulk draws
against `jax.random`'s own functions, the contiguous replay write against
the scatter, the caller-drawn sampling and acting against `replay.sample`
and `tabular.epsilon_greedy`, the reset-free transition against gymnax's
`step`, and the whole loop's schedule against the one its config
prescribes.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.rl import dqn, envs, noise, replay, tabular


def _split_bits(key, shape):
  k1, k2 = jax.random.split(key)
  return (
    jax.random.bits(k1, shape, jnp.uint32),
    jax.random.bits(k2, shape, jnp.uint32),
  )


@pytest.mark.parametrize("span", [1, 2, 3, 7, 500, 10_000, 2**20 + 5])
def test_randint_from_bits_equals_jax_randint(span):
  key = jax.random.key(span)
  higher, lower = _split_bits(key, (257,))
  np.testing.assert_array_equal(
    noise.randint_from_bits(higher, lower, span),
    jax.random.randint(key, (257,), 0, span),
  )


def test_randint_from_bits_traced_span_stays_in_range():
  higher, lower = _split_bits(jax.random.key(0), (4096,))
  values = jax.jit(noise.randint_from_bits)(higher, lower, jnp.int32(37))
  assert values.min() >= 0 and values.max() < 37
  # Every value is reached, about equally often.
  counts = np.bincount(np.asarray(values), minlength=37)
  assert counts.min() > 4096 / 37 / 2


def test_uniform_from_bits_equals_jax_uniform():
  key = jax.random.key(3)
  bits = jax.random.bits(key, (1000,), jnp.uint32)
  np.testing.assert_array_equal(
    noise.uniform_from_bits(bits), jax.random.uniform(key, (1000,))
  )


def test_draw_noise_shapes_and_ranges():
  draws = noise.draw_noise(jax.random.key(0), 5, 3, 4)
  assert draws.step_keys.shape == (5, 3)
  assert draws.reset_keys.shape == (5, 3)
  assert draws.explore.shape == (5, 3)
  assert draws.action_bits.shape == (5, 2, 3)
  assert draws.sample_bits.shape == (5, 2, 4)
  assert float(draws.explore.min()) >= 0.0
  assert float(draws.explore.max()) < 1.0
  # Every key differs from every other.
  data = jax.random.key_data(
    jnp.concatenate([draws.step_keys.ravel(), draws.reset_keys.ravel()])
  )
  assert len({tuple(np.asarray(row).ravel()) for row in data}) == 30


@pytest.mark.parametrize(
  "bad", [dict(num_iterations=0), dict(num_envs=-1), dict(batch_size=2.0)]
)
def test_draw_noise_bad_counts(bad):
  kwargs = dict(num_iterations=2, num_envs=2, batch_size=2) | bad
  name = next(iter(bad))
  with pytest.raises((TypeError, ValueError), match=name):
    noise.draw_noise(jax.random.key(0), **kwargs)


def test_contiguous_add_writes_the_rows_of_the_scatter():
  example = {"x": jnp.zeros((2,)), "y": jnp.zeros((), jnp.int32)}
  fast = slow = replay.init(12, example)
  for i in range(7):  # Wraps the ring twice.
    items = {
      "x": jnp.full((4, 2), float(i)),
      "y": jnp.arange(4, dtype=jnp.int32) + 10 * i,
    }
    fast = replay.add(fast, items, contiguous=True)
    slow = replay.add(slow, items)
  jax.tree.map(np.testing.assert_array_equal, fast, slow)


def test_contiguous_add_refuses_a_batch_not_dividing_the_capacity():
  state = replay.init(10, {"x": jnp.zeros(())})
  with pytest.raises(ValueError, match="dividing the capacity 10"):
    replay.add(state, {"x": jnp.zeros((3,))}, contiguous=True)


def test_sample_with_bits_takes_the_rows_of_sample():
  state = replay.init(64, {"x": jnp.zeros(())})
  state = replay.add(state, {"x": jnp.arange(40, dtype=jnp.float32)})
  key = jax.random.key(9)
  bits = jnp.stack(_split_bits(key, (16,)))
  np.testing.assert_array_equal(
    replay.sample_with_bits(bits, state)["x"],
    replay.sample(key, state, 16)["x"],
  )


def test_sample_with_bits_bad_shape_and_short_buffer():
  state = replay.init(8, {"x": jnp.zeros(())})
  with pytest.raises(ValueError, match=r"\[2, batch_size\]"):
    replay.sample_with_bits(jnp.zeros((3, 4), jnp.uint32), state)
  with pytest.raises(ValueError, match="capacity 8"):
    replay.sample_with_bits(jnp.zeros((2, 9), jnp.uint32), state)


def test_epsilon_greedy_from_draws_matches_epsilon_greedy():
  q = jnp.array([0.1, 0.9, -0.3])
  for seed in range(50):
    key = jax.random.key(seed)
    explore_key, action_key = jax.random.split(key)
    for epsilon in (0.0, 0.3, 1.0):
      expected = tabular.epsilon_greedy(key, q, epsilon)
      got = tabular.epsilon_greedy_from_draws(
        q,
        epsilon,
        jax.random.uniform(explore_key),
        jax.random.randint(action_key, (), 0, 3),
      )
      assert int(got) == int(expected), (seed, epsilon)


def test_epsilon_greedy_from_draws_bad_epsilon():
  with pytest.raises(ValueError, match="epsilon"):
    tabular.epsilon_greedy_from_draws(jnp.zeros(2), 1.5, 0.1, 0)


def test_step_with_reset_key_is_gymnax_auto_reset():
  env, params = envs.make("CartPole-v1")
  params = params.replace(max_steps_in_episode=5)
  obs, state = env.reset(jax.random.key(0), params)
  key = jax.random.key(1)
  for t in range(12):  # Crosses two time limits.
    key, step_key, reset_key = jax.random.split(key, 3)
    out = envs.step(step_key, env, state, 0, params, reset_key=reset_key)
    plain = envs.transition(step_key, env, state, 0, params)
    np.testing.assert_array_equal(out.next_obs, plain.next_obs)
    assert bool(out.done) == bool(plain.done)
    if bool(out.done):
      expected_obs, _ = env.reset_env(reset_key, params)
      np.testing.assert_array_equal(out.obs, expected_obs)
    else:
      np.testing.assert_array_equal(out.obs, plain.obs)
    state = out.state
    del t


_TINY = dqn.DQNConfig(
  num_envs=4,
  total_env_steps=1200,
  eval_every=400,
  eval_episodes=2,
  learning_starts=200,
  train_every=4,
  batch_size=16,
  buffer_size=400,
  hidden_sizes=(8,),
  target_period=40,
  epsilon_decay_steps=600,
)


def _schedule(config: dqn.DQNConfig) -> dict[str, np.ndarray]:
  """Epsilon, gradient steps and target updates the config prescribes."""
  before = np.arange(0, config.total_env_steps, config.num_envs)
  after = before + config.num_envs

  def crossed(period):
    return after // period > before // period

  fraction = np.minimum(before / config.epsilon_decay_steps, 1.0)
  return {
    "epsilon": config.epsilon_start
    + (config.epsilon_end - config.epsilon_start) * fraction,
    "updated": crossed(config.train_every)
    & (after >= config.learning_starts)
    & (after >= config.batch_size),
    "target_updated": crossed(config.target_period),
  }


def test_fast_loop_follows_the_schedule_and_fills_replay():
  out = jax.jit(dqn.make_train(_TINY))(jax.random.key(0))
  want = _schedule(_TINY)
  np.testing.assert_allclose(
    out["metrics"]["epsilon"], want["epsilon"], rtol=1e-6
  )
  for name in ("updated", "target_updated"):
    np.testing.assert_array_equal(
      out["metrics"][name], want[name], err_msg=name
    )
  buffer = out["state"].buffer
  assert int(buffer.size) == _TINY.buffer_size
  actions = np.asarray(buffer.storage.action)
  assert set(np.unique(actions)) == {0, 1}
  updates = int(out["metrics"]["updated"].sum())
  assert int(out["state"].num_updates) == updates
  assert not bool(out["metrics"]["diverged"])
  # CartPole's reward is 1 per step.
  np.testing.assert_array_equal(out["state"].buffer.storage.reward, 1.0)


def test_fast_loop_is_deterministic_and_vmaps():
  train = jax.jit(jax.vmap(dqn.make_train(dataclasses.replace(_TINY))))
  keys = jax.random.split(jax.random.key(1), 2)
  a, b = train(keys), train(keys)
  jax.tree.map(np.testing.assert_array_equal, a["metrics"], b["metrics"])
  single = jax.jit(dqn.make_train(_TINY))(keys[1])
  np.testing.assert_allclose(
    a["metrics"]["eval_return"][1], single["metrics"]["eval_return"], rtol=1e-6
  )
