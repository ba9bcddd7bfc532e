"""Bad input to the public functions of equivlab.rl: clear errors.

Each class of mistake (unknown environment options, keys given as lists or
batches, index arguments out of range, step sizes and probabilities out of
their domain, mismatched shapes) gets several cases; each must end in a
ValueError or TypeError from equivlab's own code that names the argument
and what was expected. Values are checked when concrete; under `jit` only
shapes and dtypes are (tested at the end).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.rl import (
  dqn,
  envs,
  evaluation,
  keys,
  linear,
  noise,
  replay,
  schedules,
  tabular,
  validation,
  value_learning,
)
from equivlab.rl.dqn import driver

_KEY = jax.random.key(0)
_TABLE = jnp.zeros((4, 2))


# ---------------------------------------------------------------------------
# Unknown environment options.


@pytest.mark.parametrize(
  ("name", "kwargs", "message"),
  [
    (
      "ChainMDP",
      {"foo": 1},
      r"\['foo'\] are not options of 'ChainMDP'; it "
      "takes num_states",
    ),
    ("ChainMDP", {"num_states": 5, "n": 5}, r"\['n'\] are not options"),
    ("CartPole-v1", {"gravity": 9.8}, "'CartPole-v1'; it takes no options"),
    ("Probe-constant", {"kind": "endless"}, "it takes no options"),
    ("ChainMDP", {"num_states": "5"}, "integer num_states >= 2"),
  ],
)
def test_unknown_environment_options(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    envs.make(name, **kwargs)


def test_unknown_environment_options_in_a_dqn_config():
  config = dqn.DQNConfig(env_name="ChainMDP", env_kwargs={"states": 4})
  with pytest.raises(ValueError, match=r"\['states'\] are not options"):
    dqn.make_train(config)


def test_known_options_still_work():
  env, _ = envs.make("ChainMDP", num_states=3)
  assert env.num_states == 3


# ---------------------------------------------------------------------------
# Keys given as lists, batches or other arrays.

_ONE_KEY = "must be one PRNG key"
_BAD_KEYS = [
  ([0, 1], "got a list of 2 item"),
  ((0, 1), "got a tuple of 2 item"),
  (np.zeros((2,), np.int32), "dtype int32"),
  (np.zeros((3,), np.uint32), r"shape \(3,\)"),
  (jax.random.split(jax.random.key(0), 2), r"shape \(2,\), dtype key"),
]


def _chain_state():
  env, params = envs.make("ChainMDP", num_states=4)
  _, state = env.reset(_KEY, params)
  return env, params, state


@pytest.mark.parametrize(("key", "message"), _BAD_KEYS)
def test_single_key_functions_refuse_lists_and_batches(key, message):
  env, params, state = _chain_state()
  buffer = replay.add(replay.init(4, jnp.zeros(2)), jnp.ones((3, 2)))
  calls = [
    lambda: tabular.epsilon_greedy(key, jnp.zeros(3), 0.1),
    lambda: envs.step(key, env, state, 0, params),
    lambda: envs.step(_KEY, env, state, 0, params, reset_key=key),
    lambda: envs.transition(key, env, state, 0, params),
    lambda: replay.sample(key, buffer, 2),
    lambda: noise.draw_noise(key, 2, 2, 2),
    lambda: keys.as_key(key),
  ]
  for call in calls:
    with pytest.raises(ValueError, match=f"{_ONE_KEY}.*{message}"):
      call()


def test_dqn_train_refuses_a_batch_of_keys_and_says_what_to_do():
  config = dqn.DQNConfig(
    env_name="Probe-constant",
    num_envs=2,
    total_env_steps=8,
    eval_every=8,
    learning_starts=0,
    train_every=2,
    batch_size=2,
    buffer_size=4,
    hidden_sizes=(2,),
    eval_episodes=1,
  )
  train, loop = dqn.make_train(config), dqn.make_loop(config)
  batch = jax.random.split(_KEY, 2)
  for call in (lambda: train(batch), lambda: loop.init([_KEY, _KEY])):
    with pytest.raises(ValueError, match="jax.vmap the function"):
      call()


def test_evaluation_refuses_bad_keys_and_episode_counts():
  env, params = envs.make("Probe-constant")
  network = dqn.make_network(dqn.DQNConfig(hidden_sizes=(2,)), 2)
  net_params = network.init(_KEY, jnp.ones((1, 1)))
  with pytest.raises(ValueError, match=_ONE_KEY):
    evaluation.evaluate([0, 1], network, net_params, env, params, 1)
  with pytest.raises(ValueError, match="num_episodes must be an int >= 1"):
    evaluation.evaluate(_KEY, network, net_params, env, params, 0)


def test_legacy_keys_are_one_key_too():
  legacy = jax.random.PRNGKey(3)
  a = tabular.epsilon_greedy(legacy, jnp.arange(3.0), 0.5)
  b = tabular.epsilon_greedy(
    jax.random.wrap_key_data(legacy), jnp.arange(3.0), 0.5
  )
  assert int(a) == int(b)


@pytest.mark.parametrize(
  "batch",
  [
    [jax.random.key(0), jax.random.key(1)],
    (jax.random.PRNGKey(0), jax.random.PRNGKey(1)),
    jax.random.split(jax.random.PRNGKey(0), 2),
  ],
)
def test_reset_batch_takes_lists_and_legacy_keys(batch):
  env, params = envs.make("ChainMDP", num_states=4)
  obs, _ = envs.reset_batch(env, batch, params)
  assert obs.shape == (2, 4)


@pytest.mark.parametrize(
  ("batch", "message"),
  [
    ([0, 1], r"keys\[0\] must be one PRNG key"),
    (np.zeros((2, 2), np.float32), "typed PRNG keys"),
    ("key", "typed PRNG keys"),
  ],
)
def test_reset_batch_refuses_other_keys(batch, message):
  env, params = envs.make("ChainMDP", num_states=4)
  with pytest.raises(ValueError, match=message):
    envs.reset_batch(env, batch, params)


# ---------------------------------------------------------------------------
# Index arguments out of range.


@pytest.mark.parametrize(
  ("args", "message"),
  [
    ((4, 0, 1.0, 0.9, 0), r"s_tm1 must index one of the 4 states.*got 4"),
    ((-1, 0, 1.0, 0.9, 0), r"s_tm1 must index.*got -1"),
    ((0, 2, 1.0, 0.9, 0), r"a_tm1 must index one of the 2 actions.*got 2"),
    ((0, -1, 1.0, 0.9, 0), r"a_tm1 must index.*got -1"),
    ((0, 0, 1.0, 0.9, 7), r"s_t must index one of the 4 states.*got 7"),
    ((np.array(5), 0, 1.0, 0.9, 0), r"s_tm1 must index.*got 5"),
  ],
)
def test_tabular_update_refuses_indices_out_of_range(args, message):
  with pytest.raises(ValueError, match=message):
    tabular.q_learning_update(_TABLE, *args, 0.1)


@pytest.mark.parametrize("index", [0.5, True, np.float32(1.0)])
def test_tabular_update_refuses_non_integer_indices(index):
  with pytest.raises(TypeError, match="s_tm1 must be an integer index"):
    tabular.q_learning_update(_TABLE, index, 0, 1.0, 0.9, 0, 0.1)


def test_tabular_update_refuses_a_table_of_another_rank_or_dtype():
  with pytest.raises(ValueError, match=r"q_table must be \[S, A\]"):
    tabular.q_learning_update(jnp.zeros(4), 0, 0, 1.0, 0.9, 0, 0.1)
  with pytest.raises(TypeError, match="q_table must have a floating-point"):
    tabular.q_learning_update(
      jnp.zeros((4, 2), jnp.int32), 0, 0, 1.0, 0.9, 0, 0.1
    )


def test_q_values_at_checks_the_observation_shape():
  config = dqn.DQNConfig(env_name="Probe-constant", hidden_sizes=(2,))
  params = dqn.make_network(config, 2).init(_KEY, jnp.ones((1, 1)))
  for obs in (jnp.ones((3, 4)), jnp.ones((3,))):
    with pytest.raises(ValueError, match=r"obs must be \[B, \*\[1\]\]"):
      dqn.q_values_at(config, params, obs)
  assert dqn.q_values_at(config, params, jnp.ones((3, 1))).shape == (3, 2)


@pytest.mark.parametrize("a_tm1", [3, -1, 100])
def test_td_errors_refuse_actions_out_of_range(a_tm1):
  q = jnp.zeros(3)
  args = (jnp.asarray(1.0), jnp.asarray(0.9))
  with pytest.raises(ValueError, match=r"a_tm1 must index one of the 3"):
    value_learning.q_learning(q, jnp.asarray(a_tm1), *args, q)
  with pytest.raises(ValueError, match=r"a_tm1 must index one of the 3"):
    value_learning.double_q_learning(q, jnp.asarray(a_tm1), *args, q, q)


@pytest.mark.parametrize("action", [2, -1, 10, np.array(2)])
def test_env_steps_refuse_actions_out_of_range(action):
  env, params, state = _chain_state()
  for step in (envs.step, envs.transition):
    with pytest.raises(ValueError, match=r"action must index one of the 2"):
      step(_KEY, env, state, action, params)
  with pytest.raises(ValueError, match=r"action must index"):
    cart, cart_params = envs.make("CartPole-v1")
    _, cart_state = cart.reset(_KEY, cart_params)
    envs.step(_KEY, cart, cart_state, action, cart_params)


def test_env_steps_refuse_float_actions():
  env, params, state = _chain_state()
  with pytest.raises(TypeError, match="action must be an integer index"):
    envs.step(_KEY, env, state, 1.0, params)


@pytest.mark.parametrize(
  ("explore", "action", "message"),
  [
    (0.5, 3, r"random_action must index one of the 3 actions.*got 3"),
    (0.5, -2, r"random_action must index.*got -2"),
    (1.0, 0, r"explore must lie in \[0, 1\)"),
    (-0.1, 0, r"explore must lie in \[0, 1\)"),
  ],
)
def test_epsilon_greedy_from_draws_checks_its_draws(explore, action, message):
  with pytest.raises(ValueError, match=message):
    tabular.epsilon_greedy_from_draws(jnp.zeros(3), 0.1, explore, action)


@pytest.mark.parametrize("a", [0, 2, -0.5, np.float32(0.0)])
def test_chain_features_refuse_moves_other_than_plus_minus_one(a):
  with pytest.raises(ValueError, match=r"a must be one of the moves"):
    linear.chain_features(1, a)
  with pytest.raises(TypeError, match=r"a must be one of the moves"):
    linear.all_action_features(1.0, ("left", "right"))


def test_random_words_must_be_uint32():
  with pytest.raises(TypeError, match="bits must be uint32 words"):
    noise.uniform_from_bits(jnp.zeros(3))
  with pytest.raises(TypeError, match="higher must be uint32 words"):
    noise.randint_from_bits(jnp.zeros(3, jnp.int32), jnp.zeros(3), 4)
  buffer = replay.add(replay.init(4, jnp.zeros(2)), jnp.ones((3, 2)))
  with pytest.raises(TypeError, match="expects uint32 bits"):
    replay.sample_with_bits(jnp.zeros((2, 2)), buffer)


def test_randint_from_bits_refuses_empty_spans_and_mismatched_words():
  words = jnp.zeros(3, jnp.uint32)
  for span in (0, -3):
    with pytest.raises(ValueError, match="span must be a number of values"):
      noise.randint_from_bits(words, words, span)
  with pytest.raises(ValueError, match="higher and lower must have one"):
    noise.randint_from_bits(words, words[:2], 4)


# ---------------------------------------------------------------------------
# Step sizes, discounts and probabilities outside their domain.


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_tabular_step_size_lies_in_zero_one(alpha):
  with pytest.raises(ValueError, match=r"alpha must be a finite step size"):
    tabular.q_learning_update(_TABLE, 0, 0, 1.0, 0.9, 1, alpha)


@pytest.mark.parametrize("discount", [-0.1, 1.5, float("nan")])
def test_discounts_lie_in_zero_one(discount):
  with pytest.raises(ValueError, match=r"discount_t must lie in \[0, 1\]"):
    tabular.q_learning_update(_TABLE, 0, 0, 1.0, discount, 1, 0.1)
  q = jnp.zeros(3)
  with pytest.raises(ValueError, match=r"discount_t must lie in \[0, 1\]"):
    value_learning.q_learning(
      q, jnp.asarray(0), jnp.asarray(1.0), jnp.asarray(discount), q
    )
  w = jnp.zeros(3)
  with pytest.raises(ValueError, match=r"discount_t must lie in \[0, 1\]"):
    linear.semi_gradient_loss(w, w, w, 1.0, discount, jnp.zeros((2, 3)))


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_linear_step_size_is_positive_and_finite(alpha):
  w = jnp.zeros(3)
  with pytest.raises(ValueError, match=r"alpha must be a finite step size"):
    linear.semi_gradient_q_learning_update(
      w, w, w, 1.0, 0.9, jnp.zeros((2, 3)), alpha
    )


@pytest.mark.parametrize(
  ("call", "error", "message"),
  [
    (
      lambda: schedules.linear_epsilon(0, 1.0, 0.1, 2.5),
      TypeError,
      "epsilon_decay_steps must be an int",
    ),
    (
      lambda: schedules.linear_epsilon(0, 1.0, 0.1, 0),
      ValueError,
      "epsilon_decay_steps must be an int >= 1",
    ),
    (
      lambda: schedules.linear_epsilon(0, 1.5, 0.1, 10),
      ValueError,
      r"epsilon_start must lie in \[0, 1\]",
    ),
    (
      lambda: schedules.update_target({}, {}, 0, 1, 1, "polyak", 0.0),
      ValueError,
      r"tau must lie in \(0, 1\]",
    ),
    (lambda: schedules.reset_block(0), ValueError, "num_iterations must"),
    (
      lambda: schedules.linear_epsilon(-5, 1.0, 0.1, 10),
      ValueError,
      "env_steps must be >= 0",
    ),
    (
      lambda: schedules.crossed_boundary(0, 4, 0),
      ValueError,
      "period must be an int >= 1",
    ),
    (
      lambda: value_learning.huber_loss(jnp.zeros(2), float("nan")),
      ValueError,
      "finite delta > 0",
    ),
    (
      lambda: envs.bootstrap_discount(jnp.zeros(2, bool), 1.5),
      ValueError,
      r"gamma must lie in \[0, 1\]",
    ),
    (
      lambda: value_learning.n_step_bootstrapped_returns(
        jnp.zeros(3), jnp.full(3, 2.0), jnp.zeros(3), 2
      ),
      ValueError,
      r"discount_t must lie in \[0, 1\]",
    ),
    (
      lambda: tabular.epsilon_greedy(_KEY, jnp.zeros(2), 1.2),
      ValueError,
      r"epsilon must lie in \[0, 1\]",
    ),
  ],
)
def test_schedules_refuse_values_outside_their_domain(call, error, message):
  with pytest.raises(error, match=message):
    call()


# ---------------------------------------------------------------------------
# Shapes of the linear learner.


@pytest.mark.parametrize(
  ("w", "w_target", "phi_tm1", "phi_t", "message"),
  [
    ((3,), (4,), (3,), (2, 3), r"w_target must have the shape of w"),
    ((3,), (3,), (4,), (2, 3), r"phi_tm1 must be features \[F\] with F = 3"),
    ((3,), (3,), (3,), (2, 4), r"phi_t must be features \[A, F\] with F = 3"),
    ((3,), (3,), (3,), (3,), r"phi_t must be features \[A, F\]"),
    ((1, 3), (1, 3), (3,), (2, 3), r"w must be weights \[F\]"),
  ],
)
def test_linear_loss_checks_shapes(w, w_target, phi_tm1, phi_t, message):
  with pytest.raises(ValueError, match=message):
    linear.semi_gradient_loss(
      jnp.zeros(w),
      jnp.zeros(w_target),
      jnp.zeros(phi_tm1),
      1.0,
      0.9,
      jnp.zeros(phi_t),
    )


def test_linear_q_values_check_shapes():
  with pytest.raises(ValueError, match=r"phi must be features \[F\] or"):
    linear.q_values(jnp.zeros(3), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="actions must hold at least one"):
    linear.all_action_features(1.0, ())


# ---------------------------------------------------------------------------
# Under jit: values are unknown, shapes and dtypes are still checked.


def test_under_jit_values_pass_and_dtypes_are_checked():
  update = jax.jit(tabular.q_learning_update)
  # An out-of-range state is not checked inside jit (documented): XLA
  # clamps it.
  update(_TABLE, jnp.asarray(9), 0, 1.0, 0.9, 0, 0.1)
  with pytest.raises(TypeError, match="s_tm1 must be an integer index"):
    update(_TABLE, jnp.asarray(0.5), 0, 1.0, 0.9, 0, 0.1)
  with pytest.raises(ValueError, match=_ONE_KEY):
    jax.jit(lambda k: tabular.epsilon_greedy(k, jnp.zeros(2), 0.1))(
      jax.random.split(_KEY, 2)
    )


def test_validation_helpers_directly():
  validation.check_index("i", np.arange(3), 3, "things")
  with pytest.raises(ValueError, match=r"i must index one of the 3 things"):
    validation.check_index("i", np.arange(4), 3, "things")
  validation.check_probability("p", np.array([0.0, 1.0]))
  with pytest.raises(ValueError, match=r"p must lie in \[0, 1\)"):
    validation.check_probability("p", 1.0, include_one=False)
  validation.check_step_size("lr", 1e-3)
  with pytest.raises(ValueError, match="lr must be a finite step size"):
    validation.check_step_size("lr", 2.0, maximum=1.0)


@pytest.mark.parametrize("config", [{"env_name": "CartPole-v1"}, None, "dqn"])
def test_dqn_entry_points_refuse_configs_of_another_kind(config, tmp_path):
  calls = [
    lambda: dqn.make_train(config),
    lambda: dqn.make_loop(config),
    lambda: dqn.seed_runner(config),
    lambda: driver.train_resumable(config, tmp_path, seeds=[0]),
  ]
  for call in calls:
    with pytest.raises(TypeError, match="config must be a dqn.DQNConfig"):
      call()


def test_configs_with_dataclass_replace_keep_their_checks():
  with pytest.raises(ValueError, match="learning_starts must be less"):
    dataclasses.replace(dqn.DQNConfig(), learning_starts=300_000)
