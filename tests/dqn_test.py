"""Tests for equivlab.rl.dqn: schedules, target updates, probes, seeds."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from equivlab.rl import dqn, noise, schedules

# Tiny settings shared by the learning tests (probe envs, 2k env steps).
_PROBE = dqn.DQNConfig(
  num_envs=4,
  total_env_steps=2000,
  eval_every=2000,
  eval_episodes=2,
  learning_starts=100,
  train_every=4,
  batch_size=32,
  buffer_size=500,
  hidden_sizes=(16,),
  learning_rate=1e-2,
  target_period=40,
  gamma=0.5,
  epsilon_decay_steps=1000,
  epsilon_end=0.5,
  double_dqn=False,
)


class EpsilonScheduleTest(chex.TestCase):
  def test_every_step(self):
    expected = [1.0, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2, 0.2]
    for t, eps in enumerate(expected):
      np.testing.assert_allclose(
        schedules.linear_epsilon(t, 1.0, 0.2, 4),
        eps,
        atol=1e-6,
        err_msg=f"t={t}",
      )

  def test_loop_uses_schedule_at_every_iteration(self):
    config = dataclasses.replace(
      _PROBE,
      env_name="Probe-constant",
      num_envs=3,
      train_every=3,
      batch_size=24,
      total_env_steps=60,
      eval_every=30,
      learning_starts=30,
      epsilon_start=0.9,
      epsilon_end=0.1,
      epsilon_decay_steps=40,
    )
    metrics = jax.jit(dqn.make_train(config))(jax.random.key(0))["metrics"]
    # Iteration i acts after 3 i env steps.
    steps = 3 * np.arange(20)
    expected = 0.9 - 0.8 * np.minimum(steps / 40, 1.0)
    np.testing.assert_allclose(metrics["epsilon"], expected, atol=1e-6)
    # Gradient steps start once 30 env steps are in the buffer.
    np.testing.assert_array_equal(metrics["updated"], steps + 3 >= 30)
    # Target period 40 crossed at 42 (iteration 13) only.
    np.testing.assert_array_equal(
      np.nonzero(np.asarray(metrics["target_updated"]))[0], [13]
    )

  @parameterized.parameters((-0.1, 0.1), (1.1, 0.1), (1.0, -0.5), (1.0, 2.0))
  def test_bad_epsilon(self, start, end):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
      schedules.linear_epsilon(0, start, end, 10)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
      dqn.make_train(
        dataclasses.replace(_PROBE, epsilon_start=start, epsilon_end=end)
      )


class TargetUpdateTest(chex.TestCase):
  def _run(self, num_envs, period, mode, tau=1.0, iterations=8, start=None):
    online = {"w": jnp.array([1.0, 2.0])}
    target = {"w": jnp.array([0.0, 0.0])}
    start = period - 2 * num_envs if start is None else start
    update = jax.jit(
      lambda b, a, tg: schedules.update_target(
        online, tg, b, a, period, mode, tau
      )
    )
    rows = []
    for i in range(iterations):
      before = start + i * num_envs
      after = before + num_envs
      rows.append((before, after, update(before, after, target)["w"]))
    return rows

  def test_hard_one_env_every_step_around_boundary(self):
    # Steps 3..11 with period 5: copies on reaching 5 and 10 only.
    for before, after, w in self._run(1, 5, "hard", start=3):
      copied = after in (5, 10)
      np.testing.assert_array_equal(
        w, [1.0, 2.0] if copied else [0.0, 0.0], err_msg=f"{before}->{after}"
      )

  def test_hard_three_envs_every_step_around_boundary(self):
    # 0->3, 3->6 (crosses 5), 6->9, 9->12 (10), 12->15 (15), 15->18,
    # 18->21 (20), 21->24: a test of t % 5 == 0 would fire only at 15.
    fired = []
    for _before, after, w in self._run(3, 5, "hard", start=0):
      if np.array_equal(w, [1.0, 2.0]):
        fired.append(after)
      else:
        np.testing.assert_array_equal(w, [0.0, 0.0])
    self.assertEqual(fired, [6, 12, 15, 21])

  def test_polyak_three_envs(self):
    for before, after, w in self._run(3, 5, "polyak", tau=0.25, start=0):
      crossed = after // 5 > before // 5
      np.testing.assert_allclose(
        w,
        [0.25, 0.5] if crossed else [0.0, 0.0],
        atol=1e-7,
        err_msg=f"{before}->{after}",
      )

  def test_polyak_every_step(self):
    online = {"w": jnp.array([1.0])}
    target = {"w": jnp.array([0.0])}
    for t in range(4):
      target = schedules.update_target(
        online, target, t, t + 1, 1, "polyak", 0.5
      )
      np.testing.assert_allclose(target["w"], [1.0 - 0.5 ** (t + 1)])

  def test_period_zero(self):
    with pytest.raises(ValueError, match="target_period must be"):
      schedules.update_target({}, {}, 0, 1, 0)
    with pytest.raises(ValueError, match="target_period must be"):
      dqn.make_train(dataclasses.replace(_PROBE, target_period=0))

  def test_bad_mode_and_tau(self):
    with pytest.raises(ValueError, match="'hard' or 'polyak'"):
      schedules.update_target({}, {}, 0, 1, 1, "soft")
    with pytest.raises(ValueError, match=r"tau must lie in \(0, 1\]"):
      dqn.make_train(dataclasses.replace(_PROBE, tau=0.0))


class TDErrorTest(chex.TestCase):
  class _Table:
    """Stands in for a network: params["q"][obs] are the action values."""

    def apply(self, params, obs):
      return params["q"][obs]

  def test_double_dqn_decoy(self):
    online = {"q": jnp.array([[0.0, 3.0], [1.0, 0.0]])}
    target = {"q": jnp.array([[0.0, 0.0], [2.0, 10.0]])}
    batch = dqn.Transition(
      obs=jnp.array([0]),
      action=jnp.array([1]),
      reward=jnp.array([1.0]),
      discount=jnp.array([0.5]),
      next_obs=jnp.array([1]),
    )
    # Online picks action 0 at the next state, valued 2 by the target:
    # 1 + 0.5 * 2 - 3 = -1. Plain DQN takes the target's max, 10: 3.
    double = dqn.td_errors(self._Table(), online, target, batch, True)
    single = dqn.td_errors(self._Table(), online, target, batch, False)
    np.testing.assert_allclose(double, [-1.0], atol=1e-6)
    np.testing.assert_allclose(single, [3.0], atol=1e-6)


class ConfigTest(chex.TestCase):
  @parameterized.named_parameters(
    ("unknown_env", dict(env_name="NoSuchEnv-v0"), "Unknown environment"),
    ("continuous", dict(env_name="Pendulum-v1"), "discrete"),
    ("buffer_small", dict(buffer_size=16, batch_size=32), "at least batch"),
    ("target_period", dict(target_period=0), "target_period must be"),
    ("train_every", dict(train_every=2), "train_every"),
    ("eval_every", dict(eval_every=1001), "multiple of num_envs"),
    ("gamma", dict(gamma=1.5), "gamma"),
    ("loss", dict(loss="l1"), "loss must be"),
    ("lr_nan", dict(learning_rate=float("nan")), "learning_rate must be"),
    ("lr_zero", dict(learning_rate=0.0), "learning_rate must be"),
    ("width_zero", dict(hidden_sizes=(0,)), r"hidden_sizes\[0\] must be"),
    ("clip_zero", dict(max_grad_norm=0.0), "max_grad_norm must be"),
    (
      "learning_never_starts",
      dict(learning_starts=2000),
      r"learning_starts must be less than total_env_steps \(2000\)",
    ),
    ("decay_zero", dict(epsilon_decay_steps=0), "epsilon_decay_steps must"),
  )
  def test_bad_config(self, change, message):
    with pytest.raises(ValueError, match=message):
      dqn.make_train(dataclasses.replace(_PROBE, **change))

  def test_wrong_kinds_are_type_errors(self):
    with pytest.raises(TypeError, match="learning_rate must be"):
      dataclasses.replace(_PROBE, learning_rate="fast")
    with pytest.raises(TypeError, match="total_env_steps must be"):
      dataclasses.replace(_PROBE, total_env_steps=2000.0)

  def test_schedule_defaults_scale_with_the_run(self):
    default = dqn.DQNConfig()
    self.assertIsNone(default.learning_starts)
    self.assertIsNone(default.epsilon_decay_steps)
    resolved = default.resolved()
    self.assertEqual(resolved.learning_starts, 10_000)
    self.assertEqual(resolved.epsilon_decay_steps, 100_000)
    short = dqn.DQNConfig(total_env_steps=20_000).resolved()
    self.assertEqual(short.learning_starts, 666)
    self.assertEqual(short.epsilon_decay_steps, 6_666)
    tiny = dqn.DQNConfig(
      num_envs=1, train_every=1, eval_every=2, total_env_steps=2
    )
    self.assertEqual(tiny.resolved().epsilon_decay_steps, 1)
    self.assertEqual(tiny.resolved().learning_starts, 0)
    # Given values are kept; the loop runs on the resolved config.
    self.assertEqual(_PROBE.resolved(), _PROBE)
    parts = dqn.build(dataclasses.replace(_PROBE, learning_starts=None))
    self.assertEqual(parts.config.learning_starts, 2000 // 30)

  def test_loop_follows_the_scaled_schedule(self):
    config = dataclasses.replace(
      _PROBE,
      total_env_steps=600,
      eval_every=600,
      batch_size=16,
      learning_starts=None,
      epsilon_decay_steps=None,
    )
    metrics = jax.jit(dqn.make_train(config))(jax.random.key(0))["metrics"]
    steps = np.arange(0, 600, config.num_envs)
    want = schedules.linear_epsilon(steps, 1.0, config.epsilon_end, 200)
    np.testing.assert_allclose(metrics["epsilon"], want, rtol=1e-6)
    first = int(np.argmax(metrics["updated"]))
    self.assertEqual((first + 1) * config.num_envs, 20)  # 600 // 30

  def test_env_kwargs_mapping_and_width_list(self):
    config = dataclasses.replace(
      _PROBE, env_kwargs={"num_states": 5}, hidden_sizes=[4, 4]
    )
    self.assertEqual(config.env_kwargs, (("num_states", 5),))
    self.assertEqual(config.hidden_sizes, (4, 4))


class DivergenceTest(chex.TestCase):
  def test_a_diverged_run_is_flagged_and_raises(self):
    config = dataclasses.replace(_PROBE, learning_rate=1e38)
    metrics = jax.jit(dqn.make_train(config))(jax.random.key(0))["metrics"]
    self.assertTrue(bool(metrics["diverged"]))
    first = int(np.argmin(np.asarray(metrics["finite"])))
    with pytest.raises(
      FloatingPointError,
      match=f"seed index 0 at iteration {first} .env steps {first * 4}",
    ):
      dqn.raise_if_diverged(metrics)

  def test_a_finite_run_passes(self):
    metrics = jax.jit(dqn.make_train(_PROBE))(jax.random.key(0))["metrics"]
    self.assertFalse(bool(metrics["diverged"]))
    dqn.raise_if_diverged(metrics)  # no error


class LoopTest(chex.TestCase):
  """`make_loop`'s pieces, chunk by chunk, give the bits of `make_train`."""

  def test_chunks_are_the_bits_of_make_train(self):
    config = dataclasses.replace(_PROBE, eval_every=400)
    key = jax.random.key(3)
    whole = jax.jit(dqn.make_train(config))(key)
    loop = dqn.make_loop(config)
    self.assertEqual(loop.num_periods, 5)
    run_periods = jax.jit(loop.run_periods)
    state, parts = jax.jit(loop.init)(key), []
    for first, count in ((0, 2), (2, 1), (3, 2)):
      state, metrics = run_periods(key, state, jnp.arange(first, first + count))
      parts.append(metrics)
    metrics = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
    jax.tree.map(
      np.testing.assert_array_equal,
      (whole["state"], whole["metrics"]),
      (state, dqn.flatten_metrics(metrics)),
    )

  def test_reset_blocks_divide_the_period_in_two_or_more(self):
    self.assertEqual(schedules.reset_block(1250), 25)
    self.assertEqual(schedules.reset_block(2500), 25)
    self.assertEqual(schedules.reset_block(64), 32)
    self.assertEqual(schedules.reset_block(32), 16)
    self.assertEqual(schedules.reset_block(100), 25)
    for prime_or_tiny in (1, 2, 3, 37):
      self.assertEqual(schedules.reset_block(prime_or_tiny), 1)

  def test_period_resets_in_blocks_are_those_of_each_iteration(self):
    """Blocked resets train as one reset per iteration does.

    Equal up to float rounding: XLA may fuse a reset's arithmetic
    otherwise in another program (the bits of chunks against a whole run
    are checked above).
    """
    config = dataclasses.replace(_PROBE, eval_every=400)
    parts = dqn.build(config)
    state = dqn.make_loop(config).init(jax.random.key(0))
    run_key, eval_key = jax.random.split(jax.random.key(2))
    blocked_state, blocked = jax.jit(
      lambda s: dqn.train_then_evaluate(parts, run_key, eval_key, s, 0)
    )(state)

    def one_by_one(state):
      key = jax.random.fold_in(run_key, 0)
      draws = noise.draw_noise(key, 100, 4, config.batch_size)
      return jax.lax.scan(functools.partial(dqn.iteration, parts), state, draws)

    state, metrics = jax.jit(one_by_one)(state)
    chex.assert_trees_all_close(blocked_state, state, rtol=1e-4, atol=1e-6)
    for name in ("episodes", "updated", "target_updated", "epsilon"):
      np.testing.assert_array_equal(blocked[name], metrics[name], name)
    np.testing.assert_allclose(blocked["loss"], metrics["loss"], rtol=1e-4)

  def test_state_axes_mark_the_shared_counters(self):
    axes = dqn.make_loop(_PROBE).state_axes
    self.assertIsNone(axes.env_steps)
    self.assertIsNone(axes.num_updates)
    self.assertIsNone(axes.buffer.position)
    self.assertIsNone(axes.buffer.size)
    self.assertIsNone(axes.opt_state[0].count)
    self.assertEqual(axes.opt_state[0].mu["params"]["Dense_0"]["kernel"], 0)
    self.assertEqual(axes.buffer.storage.obs, 0)
    self.assertEqual(axes.params["params"]["Dense_1"]["bias"], 0)


def _learned_q(config, obs, key=0):
  out = jax.jit(dqn.make_train(config))(jax.random.key(key))
  return np.asarray(dqn.q_values_at(config, out["state"].params, obs))


class ProbeTest(chex.TestCase):
  """Known action values learned within 0.1 (A. Jones's probe envs)."""

  def test_constant_reward(self):
    config = dataclasses.replace(_PROBE, env_name="Probe-constant")
    np.testing.assert_allclose(
      _learned_q(config, jnp.ones((1, 1))), [[1.0, 1.0]], atol=0.1
    )

  def test_two_step_double_polyak(self):
    config = dataclasses.replace(
      _PROBE,
      env_name="Probe-two_step",
      double_dqn=True,
      target_update="polyak",
      target_period=4,
      tau=0.2,
    )
    q = _learned_q(config, jnp.eye(2))
    np.testing.assert_allclose(q[0], [_PROBE.gamma] * 2, atol=0.1)
    np.testing.assert_allclose(q[1], [1.0, 1.0], atol=0.1)

  def test_action_dependent_reward_huber(self):
    config = dataclasses.replace(
      _PROBE, env_name="Probe-action_reward", loss="huber"
    )
    q = _learned_q(config, jnp.ones((1, 1)))
    self.assertEqual(int(np.argmax(q[0])), 1)
    np.testing.assert_allclose(q, [[-1.0, 1.0]], atol=0.1)

  def test_truncation_bootstraps(self):
    # Reward 1 forever, every episode cut by a time limit of 1 step. Cutting
    # the bootstrap would learn Q = 1; bootstrapping learns 1 / (1 - gamma).
    config = dataclasses.replace(
      _PROBE, env_name="Probe-endless", max_steps_in_episode=1
    )
    np.testing.assert_allclose(
      _learned_q(config, jnp.ones((1, 1))), [[2.0, 2.0]], atol=0.1
    )


class SeedTest(chex.TestCase):
  def test_same_key_same_returns_different_keys_differ(self):
    config = dataclasses.replace(
      _PROBE,
      env_name="ChainMDP",
      env_kwargs=(("num_states", 5),),
      max_steps_in_episode=20,
      total_env_steps=800,
      eval_every=400,
      gamma=0.9,
      epsilon_end=0.3,
    )
    key0, key1 = jax.random.key(0), jax.random.key(1)
    keys = jnp.stack([key0, key0, key1])
    train = jax.jit(jax.vmap(dqn.make_train(config)))
    metrics = train(keys)["metrics"]
    returns = np.asarray(metrics["episode_return_sum"])
    for name in ("episode_return_sum", "loss", "eval_return", "epsilon"):
      np.testing.assert_array_equal(metrics[name][0], metrics[name][1])
    self.assertFalse(np.array_equal(returns[0], returns[2]))
    self.assertFalse(np.array_equal(metrics["loss"][0], metrics["loss"][2]))
    # The keys passed in are untouched and reusable.
    np.testing.assert_array_equal(
      jax.random.key_data(keys[0]), jax.random.key_data(key0)
    )
    # Greedy policy after training walks straight to the end: 4 steps.
    np.testing.assert_allclose(metrics["eval_return"][:, -1], -4.0)


class SeedRunnerTest(chex.TestCase):
  def test_groups_give_what_vmap_gives_over_each_group(self):
    config = dataclasses.replace(_PROBE, total_env_steps=400, eval_every=400)
    keys = jax.random.split(jax.random.key(3), 3)
    got = dqn.train_seeds(config, keys, groups=2)  # groups of 1 and 2 seeds
    train = jax.jit(jax.vmap(dqn.make_train(config)))
    want = jax.tree.map(
      lambda a, b: np.concatenate([a, b]), train(keys[:1]), train(keys[1:])
    )
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, got), want)
    whole = dqn.seed_runner(config, groups=1)(keys)
    chex.assert_trees_all_equal(whole, train(keys))
    self.assertEqual(got["metrics"]["eval_return"].shape, (3, 1))

  def test_keys_of_every_kind_jax_vmap_takes(self):
    config = dataclasses.replace(_PROBE, total_env_steps=400, eval_every=400)
    legacy = jax.random.split(jax.random.PRNGKey(0), 2)  # uint32 [2, 2]
    typed = jax.random.wrap_key_data(legacy)
    want = jax.jit(jax.vmap(dqn.make_train(config)))(legacy)
    run = dqn.seed_runner(config, groups=1)
    for keys in (legacy, typed, list(legacy), [typed[0], typed[1]]):
      got = run(keys)
      np.testing.assert_array_equal(
        got["metrics"]["loss"], want["metrics"]["loss"]
      )
    got = dqn.train_seeds(config, tuple(typed), groups=2)
    np.testing.assert_array_equal(
      got["metrics"]["eval_return"], want["metrics"]["eval_return"]
    )

  @parameterized.parameters(
    (lambda: jax.random.key(0), r"got shape \(\), dtype key"),
    (lambda: jax.random.PRNGKey(0), r"got shape \(2,\), dtype uint32"),
    (lambda: jnp.zeros((2, 3), jnp.uint32), r"legacy uint32 keys \[S, 2\]"),
    (lambda: jnp.zeros((2, 2), jnp.int32), "dtype int32"),
    (lambda: [0, 1], r"keys\[0\] must be one PRNG key"),
    (lambda: [], "got an empty list"),
    (lambda: jax.random.split(jax.random.key(0), 0), "got no keys"),
  )
  def test_bad_keys_say_what_was_expected(self, make_keys, message):
    config = dataclasses.replace(_PROBE, total_env_steps=400, eval_every=400)
    with self.assertRaisesRegex(ValueError, message):
      dqn.train_seeds(config, make_keys())

  def test_bad_group_counts_are_refused(self):
    config = dataclasses.replace(_PROBE, total_env_steps=400, eval_every=400)
    keys = jax.random.split(jax.random.key(0), 2)
    with self.assertRaisesRegex(ValueError, "groups must be an int >= 1"):
      dqn.seed_runner(config, groups=0)
    with self.assertRaisesRegex(TypeError, "groups must be an int >= 1"):
      dqn.seed_runner(config, groups=1.5)
    with self.assertRaisesRegex(ValueError, "must not exceed"):
      dqn.train_seeds(config, keys, groups=3)
    with self.assertRaisesRegex(ValueError, "typed key array"):
      dqn.train_seeds(config, keys[:0], groups=None)
