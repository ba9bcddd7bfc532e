"""The DQN loop as it was before the speed work, kept for before/after timing.

`make_train(config)` is `equivlab.rl.dqn.make_train` as first committed
(69371c9, unchanged until the speed work), split into functions but op for op
the same: it draws every random number from the caller's key (threefry by
default) in about ten small calls per iteration, writes replay rows with a
scatter, passes the whole carry through its `lax.cond`, and evaluates with
gymnax's auto-resetting `env.step`. It reuses the library's unchanged pure
pieces (TD errors, schedules, replay `add`/`sample`, `envs.step` without a
reset key, `epsilon_greedy`, `dqn.build`, `dqn.init_state`).

`benchmarks/dqn.py` times it against today's `dqn.make_train`, and
`tests/rl_noise_test.py` checks that both follow the same schedule and
fill the replay buffer alike.
"""

import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from equivlab.rl import dqn, replay, schedules, tabular
from equivlab.rl import envs as envs_lib


def _learn(parts: dqn.DQNParts, state: dqn.DQNState, key):
  config = parts.config
  batch = replay.sample(key, state.buffer, config.batch_size, check=False)

  def batch_loss(params, target_params, batch):
    td = dqn.td_errors(
      parts.network, params, target_params, batch, config.double_dqn
    )
    return jnp.mean(parts.loss_fn(td))

  loss, grads = jax.value_and_grad(batch_loss)(
    state.params, state.target_params, batch
  )
  updates, opt_state = parts.optimizer.update(
    grads, state.opt_state, state.params
  )
  params = optax.apply_updates(state.params, updates)
  state = state._replace(
    params=params, opt_state=opt_state, num_updates=state.num_updates + 1
  )
  return state, loss


def _skip(state: dqn.DQNState, key):
  del key
  return state, jnp.zeros((), jnp.float32)


def _act_and_store(parts: dqn.DQNParts, state: dqn.DQNState, act_key, env_key):
  config, env, env_params = parts.config, parts.env, parts.env_params
  num_envs = config.num_envs
  epsilon = schedules.linear_epsilon(
    state.env_steps,
    config.epsilon_start,
    config.epsilon_end,
    config.epsilon_decay_steps,
  )
  q_values = parts.network.apply(state.params, state.obs)
  actions = jax.vmap(tabular.epsilon_greedy, in_axes=(0, 0, None))(
    jax.random.split(act_key, num_envs), q_values, epsilon
  )
  out = jax.vmap(lambda k, s, a: envs_lib.step(k, env, s, a, env_params))(
    jax.random.split(env_key, num_envs), state.env_state, actions
  )
  transitions = dqn.Transition(
    obs=state.obs,
    action=actions,
    reward=out.reward,
    discount=envs_lib.bootstrap_discount(out.terminated, config.gamma),
    next_obs=out.next_obs,
  )
  episode_return = state.episode_return + out.reward
  done = out.done
  state = state._replace(
    buffer=replay.add(state.buffer, transitions),
    env_state=out.state,
    obs=out.obs,
    episode_return=jnp.where(done, 0.0, episode_return),
    env_steps=state.env_steps + num_envs,
  )
  metrics = {
    "epsilon": epsilon,
    "episode_return_sum": jnp.sum(jnp.where(done, episode_return, 0.0)),
    "episodes": jnp.sum(done.astype(jnp.int32)),
  }
  return state, metrics


def _iteration(parts: dqn.DQNParts, loop_key, state: dqn.DQNState, unused):
  del unused
  config = parts.config
  step_key = jax.random.fold_in(loop_key, state.env_steps)
  act_key, env_key, learn_key = jax.random.split(step_key, 3)
  steps_before = state.env_steps
  state, metrics = _act_and_store(parts, state, act_key, env_key)
  steps_after = state.env_steps
  should_learn = (
    schedules.crossed_boundary(steps_before, steps_after, config.train_every)
    & (steps_after >= config.learning_starts)
    & replay.can_sample(state.buffer, config.batch_size)
  )
  state, loss = jax.lax.cond(
    should_learn, functools.partial(_learn, parts), _skip, state, learn_key
  )
  target_params = schedules.update_target(
    state.params,
    state.target_params,
    steps_before,
    steps_after,
    config.target_period,
    config.target_update,
    config.tau,
  )
  state = state._replace(target_params=target_params)
  metrics.update(
    loss=loss,
    updated=should_learn,
    target_updated=schedules.crossed_boundary(
      steps_before, steps_after, config.target_period
    ),
  )
  return state, metrics


def _evaluate(
  key: chex.PRNGKey,
  network,
  params: Any,
  env,
  env_params,
  num_episodes: int,
) -> jax.Array:
  """Mean undiscounted return of `num_episodes` greedy episodes.

  Each episode runs until it terminates or hits the time limit.

  Args:
    key: a PRNG key.
    network: the Q-network module.
    params: its parameters.
    env: a gymnax environment.
    env_params: its parameters.
    num_episodes: how many episodes, run in parallel.

  Returns:
    The mean return, float32 `[]`.
  """
  reset_key, run_key = jax.random.split(key)
  obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
    jax.random.split(reset_key, num_episodes), env_params
  )
  zeros = jnp.zeros((num_episodes,), jnp.float32)
  active = jnp.ones((num_episodes,), bool)
  max_steps = env_params.max_steps_in_episode

  def cond(carry):
    _, _, _, active, step = carry
    return jnp.logical_and(jnp.any(active), step < max_steps)

  def body(carry):
    obs, env_state, returns, active, step = carry
    actions = jnp.argmax(network.apply(params, obs), axis=-1)
    step_keys = jax.random.split(
      jax.random.fold_in(run_key, step), num_episodes
    )
    obs, env_state, reward, terminated, truncated, _ = jax.vmap(
      env.step, in_axes=(0, 0, 0, None)
    )(step_keys, env_state, actions, env_params)
    returns = returns + jnp.where(active, reward, 0.0)
    active = active & ~(terminated | truncated)
    return obs, env_state, returns, active, step + 1

  carry = (obs, env_state, zeros, active, jnp.zeros((), jnp.int32))
  _, _, returns, _, _ = jax.lax.while_loop(cond, body, carry)
  return jnp.mean(returns)


def _eval_period(parts: dqn.DQNParts, loop_key, eval_key, state, index):
  config = parts.config
  state, metrics = jax.lax.scan(
    functools.partial(_iteration, parts, loop_key),
    state,
    None,
    length=config.eval_every // config.num_envs,
  )
  metrics["eval_return"] = _evaluate(
    jax.random.fold_in(eval_key, index),
    parts.network,
    state.params,
    parts.env,
    parts.env_params,
    config.eval_episodes,
  )
  metrics["eval_env_steps"] = state.env_steps
  return state, metrics


def make_train(config: dqn.DQNConfig):
  """The first implementation's `train(key) -> {"state", "metrics"}`.

  Same metrics as `dqn.make_train` except "finite" and "diverged", which it
  did not have.
  """
  parts = dqn.build(config)
  num_evals = config.total_env_steps // config.eval_every

  def train(key):
    init_key, reset_key, loop_key, eval_key = jax.random.split(key, 4)
    state = dqn.init_state(parts, init_key, reset_key)
    period = functools.partial(_eval_period, parts, loop_key, eval_key)
    state, metrics = jax.lax.scan(period, state, jnp.arange(num_evals))
    per_iteration = {
      name: value.reshape((-1,))
      for name, value in metrics.items()
      if name not in ("eval_return", "eval_env_steps")
    }
    per_iteration["eval_return"] = metrics["eval_return"]
    per_iteration["eval_env_steps"] = metrics["eval_env_steps"]
    return {"state": state, "metrics": per_iteration}

  return train
