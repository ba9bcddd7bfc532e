"""DQN with a target network, the whole training loop under `jax.jit`.

`make_train(config)` returns a pure `train(key)` whose every part (epsilon-
greedy acting in `num_envs` parallel environments, storing transitions in a
replay buffer, gradient steps, target-network updates and greedy
evaluation) runs inside `lax.scan`, so seeds batch with
`jax.jit(jax.vmap(train))(keys)`. Mnih et al. (2015); double DQN from van
Hasselt, Guez & Silver (2016); seed 004 3(c)-(d); the `make_train` layout
follows purejaxrl.

One iteration of the loop steps all `num_envs` environments once, so the
env-step counter `t` grows by `num_envs`. Periodic events (a gradient step
every `train_every` env steps, a target update every `target_period` env
steps) fire when an iteration CROSSES a multiple of the period, i.e. when
`(t + num_envs) // period > t // period`, which is right for any number of
environments (a test for `t % period == 0` would never fire for, say, 3
environments and a period of 10 at t = 10, 20, ...).
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from equivlab.rl import envs as envs_lib
from equivlab.rl import replay, tabular, value_learning


@dataclasses.dataclass(frozen=True)
class DQNConfig:
  """Every DQN setting; env steps count transitions summed over envs.

  Attributes:
    env_name: "CartPole-v1" or any name `envs.make` accepts.
    env_kwargs: constructor arguments as `(name, value)` pairs.
    max_steps_in_episode: overrides the environment's time limit if set.
    num_envs: parallel environments stepped per iteration.
    total_env_steps: the training budget in env steps.
    hidden_sizes: widths of the Q-network's hidden layers.
    learning_rate: Adam's step size.
    max_grad_norm: global-norm gradient clipping, or None.
    gamma: the discount factor in `[0, 1]`.
    loss: "huber" or "l2" on the TD error.
    double_dqn: select next actions with the online network, value them
      with the target network.
    buffer_size: replay capacity (>= batch_size).
    batch_size: transitions per gradient step.
    learning_starts: env steps before the first gradient step.
    train_every: env steps between gradient steps (>= num_envs).
    target_update: "hard" (copy every `target_period` env steps, via
      `optax.periodic_update`) or "polyak" (`optax.incremental_update` with
      step size `tau` every `target_period` env steps).
    target_period: env steps between target updates, >= 1.
    tau: Polyak step size in `(0, 1]` (ignored for "hard").
    epsilon_start: exploration probability at step 0, in `[0, 1]`.
    epsilon_end: exploration probability after the decay, in `[0, 1]`.
    epsilon_decay_steps: env steps of the linear decay, >= 1.
    eval_every: env steps between greedy evaluations (a multiple of
      num_envs dividing total_env_steps).
    eval_episodes: greedy episodes per evaluation.
  """

  env_name: str = "CartPole-v1"
  env_kwargs: tuple = ()
  max_steps_in_episode: int | None = None
  num_envs: int = 8
  total_env_steps: int = 300_000
  hidden_sizes: tuple[int, ...] = (120, 84)
  learning_rate: float = 2.5e-4
  max_grad_norm: float | None = None
  gamma: float = 0.99
  loss: str = "l2"
  double_dqn: bool = True
  buffer_size: int = 10_000
  batch_size: int = 128
  learning_starts: int = 10_000
  train_every: int = 8
  target_update: str = "hard"
  target_period: int = 500
  tau: float = 1.0
  epsilon_start: float = 1.0
  epsilon_end: float = 0.05
  epsilon_decay_steps: int = 100_000
  eval_every: int = 10_000
  eval_episodes: int = 10


class Transition(NamedTuple):
  """One stored transition; `next_obs` is the pre-reset observation."""

  obs: jax.Array
  action: jax.Array
  reward: jax.Array
  discount: jax.Array
  next_obs: jax.Array


class TrainState(NamedTuple):
  """The scan carry of the DQN loop.

  Attributes:
    params: online Q-network parameters.
    target_params: target-network parameters.
    opt_state: the optimizer state.
    buffer: the replay buffer.
    env_state: the environments' states, leaves `[num_envs, ...]`.
    obs: the observations to act on, `[num_envs, ...]`.
    episode_return: the running return of each environment, `[num_envs]`.
    env_steps: env steps taken so far, int32 `[]`.
    num_updates: gradient steps taken so far, int32 `[]`.
  """

  params: Any
  target_params: Any
  opt_state: Any
  buffer: replay.ReplayState
  env_state: Any
  obs: jax.Array
  episode_return: jax.Array
  env_steps: jax.Array
  num_updates: jax.Array


class QNetwork(nn.Module):
  """An MLP from (flattened) observations to one value per action."""

  num_actions: int
  hidden_sizes: tuple[int, ...] = (120, 84)

  @nn.compact
  def __call__(self, obs: jax.Array) -> jax.Array:
    """Maps observations `[B, *obs_shape]` to action values `[B, A]`."""
    x = obs.reshape((obs.shape[0], -1)).astype(jnp.float32)
    for width in self.hidden_sizes:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_actions)(x)


# ----------------------------------------------------------------------------
# Pure pieces, tested one by one.


def linear_epsilon(
  env_steps: chex.Numeric, start: float, end: float, decay_steps: int
) -> jax.Array:
  """Linearly decayed exploration probability (seed 004 3(d)).

  `start + (end - start) * min(env_steps / decay_steps, 1)`.

  Args:
    env_steps: env steps taken so far, `[]`.
    start: epsilon at step 0, in `[0, 1]`.
    end: epsilon from `decay_steps` on, in `[0, 1]`.
    decay_steps: length of the decay, >= 1.

  Returns:
    float32 epsilon `[]`.

  Raises:
    ValueError: if `start` or `end` lies outside `[0, 1]`, or
      `decay_steps < 1`.
  """
  tabular.check_epsilon(start, "epsilon_start")
  tabular.check_epsilon(end, "epsilon_end")
  if decay_steps < 1:
    raise ValueError(f"epsilon_decay_steps must be >= 1, got {decay_steps}.")
  fraction = jnp.minimum(jnp.asarray(env_steps, jnp.float32) / decay_steps, 1.0)
  return jnp.asarray(start + (end - start) * fraction, jnp.float32)


def crossed_boundary(
  steps_before: chex.Numeric, steps_after: chex.Numeric, period: int
) -> jax.Array:
  """Whether `(steps_before, steps_after]` contains a multiple of `period`.

  Args:
    steps_before: the counter before an iteration, `[]`.
    steps_after: the counter after it, `[]`.
    period: the period, >= 1.

  Returns:
    bool `[]`.
  """
  return steps_after // period > steps_before // period


def update_target(
  online_params: Any,
  target_params: Any,
  steps_before: chex.Numeric,
  steps_after: chex.Numeric,
  period: int,
  mode: str = "hard",
  tau: float = 1.0,
) -> Any:
  """Updates the target network when an iteration crosses a period boundary.

  "hard" copies the online parameters with `optax.periodic_update`, which
  fires when its `steps % update_period == 0`: it is handed 0 exactly when
  a boundary was crossed (and 1 otherwise, with `update_period = 2`), so
  the copy happens once per crossing whatever the step increment. "polyak"
  applies `optax.incremental_update` with step size `tau` on a crossing and
  0 otherwise (which leaves the target exactly as it was).

  Args:
    online_params: the online network's parameters.
    target_params: the target network's parameters.
    steps_before: the env-step counter before the iteration, `[]`.
    steps_after: the counter after it, `[]`.
    period: env steps between updates, >= 1.
    mode: "hard" or "polyak".
    tau: the Polyak step size in `(0, 1]`.

  Returns:
    The new target parameters.

  Raises:
    ValueError: for a period < 1, an unknown mode, or tau outside (0, 1].
  """
  if not isinstance(period, int) or period < 1:
    raise ValueError(f"target_period must be an integer >= 1, got {period!r}.")
  crossed = crossed_boundary(steps_before, steps_after, period)
  if mode == "hard":
    return optax.periodic_update(
      online_params,
      target_params,
      steps=jnp.where(crossed, 0, 1),
      update_period=2,
    )
  if mode == "polyak":
    if not 0.0 < tau <= 1.0:
      raise ValueError(f"tau must lie in (0, 1], got {tau}.")
    step_size = jnp.where(crossed, jnp.float32(tau), jnp.float32(0.0))
    return optax.incremental_update(online_params, target_params, step_size)
  raise ValueError(f"target_update must be 'hard' or 'polyak', got {mode!r}.")


def td_errors(
  network: QNetwork,
  params: Any,
  target_params: Any,
  batch: Transition,
  double_dqn: bool,
) -> jax.Array:
  """Per-transition (double) Q-learning TD errors of a batch, `[B]`.

  Args:
    network: the Q-network module.
    params: online parameters (differentiated).
    target_params: target parameters (held constant).
    batch: transitions with leading axis `[B]`.
    double_dqn: use `double_q_learning` with the online network selecting.

  Returns:
    TD errors `[B]`.
  """
  q_tm1 = network.apply(params, batch.obs)
  q_t_value = network.apply(target_params, batch.next_obs)
  if double_dqn:
    q_t_selector = network.apply(params, batch.next_obs)
    td = jax.vmap(value_learning.double_q_learning)(
      q_tm1,
      batch.action,
      batch.reward,
      batch.discount,
      q_t_value,
      q_t_selector,
    )
  else:
    td = jax.vmap(value_learning.q_learning)(
      q_tm1, batch.action, batch.reward, batch.discount, q_t_value
    )
  chex.assert_shape(td, (batch.reward.shape[0],))
  return td


# ----------------------------------------------------------------------------
# Construction and validation.


def validate_config(config: DQNConfig) -> None:
  """Checks a config; raises ValueError naming the bad field and its value.

  Args:
    config: the settings.

  Raises:
    ValueError: on any inconsistent or out-of-range setting.
  """

  def positive_int(name):
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")

  for name in (
    "num_envs",
    "total_env_steps",
    "buffer_size",
    "batch_size",
    "train_every",
    "target_period",
    "epsilon_decay_steps",
    "eval_every",
    "eval_episodes",
  ):
    positive_int(name)
  if config.buffer_size < config.batch_size:
    raise ValueError(
      f"buffer_size ({config.buffer_size}) must be at least batch_size "
      f"({config.batch_size})."
    )
  if config.buffer_size < config.num_envs:
    raise ValueError(
      f"buffer_size ({config.buffer_size}) must hold one step of all "
      f"num_envs ({config.num_envs})."
    )
  tabular.check_epsilon(config.epsilon_start, "epsilon_start")
  tabular.check_epsilon(config.epsilon_end, "epsilon_end")
  if not 0.0 <= config.gamma <= 1.0:
    raise ValueError(f"gamma must lie in [0, 1], got {config.gamma}.")
  if config.loss not in ("huber", "l2"):
    raise ValueError(f"loss must be 'huber' or 'l2', got {config.loss!r}.")
  if config.target_update not in ("hard", "polyak"):
    raise ValueError(
      f"target_update must be 'hard' or 'polyak', got {config.target_update!r}."
    )
  if not 0.0 < config.tau <= 1.0:
    raise ValueError(f"tau must lie in (0, 1], got {config.tau}.")
  if config.train_every < config.num_envs:
    raise ValueError(
      f"train_every ({config.train_every}) must be >= num_envs "
      f"({config.num_envs}): the loop takes at most one gradient step per "
      "iteration."
    )
  if config.eval_every % config.num_envs:
    raise ValueError(
      f"eval_every ({config.eval_every}) must be a multiple of num_envs "
      f"({config.num_envs})."
    )
  if config.total_env_steps % config.eval_every:
    raise ValueError(
      f"total_env_steps ({config.total_env_steps}) must be a multiple of "
      f"eval_every ({config.eval_every})."
    )
  if config.learning_starts < 0:
    raise ValueError(
      f"learning_starts must be >= 0, got {config.learning_starts}."
    )


def make_env(config: DQNConfig):
  """The environment and its parameters (time limit applied), `(env, params)`.

  Raises:
    ValueError: for an unknown or continuous-action environment, or a time
      limit below 1.
  """
  env, env_params = envs_lib.make(config.env_name, **dict(config.env_kwargs))
  if config.max_steps_in_episode is not None:
    if config.max_steps_in_episode < 1:
      raise ValueError(
        f"max_steps_in_episode must be >= 1, got {config.max_steps_in_episode}."
      )
    env_params = env_params.replace(
      max_steps_in_episode=config.max_steps_in_episode
    )
  return env, env_params


def make_network(config: DQNConfig, num_actions: int) -> QNetwork:
  """The Q-network for `config`."""
  return QNetwork(num_actions=num_actions, hidden_sizes=config.hidden_sizes)


def make_optimizer(config: DQNConfig) -> optax.GradientTransformation:
  """Adam, after global-norm clipping when `max_grad_norm` is set."""
  adam = optax.adam(config.learning_rate)
  if config.max_grad_norm is None:
    return adam
  return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


def evaluate(
  key: chex.PRNGKey,
  network: QNetwork,
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


def make_train(config: DQNConfig) -> Callable[[chex.PRNGKey], dict]:
  """Builds the pure, jittable, vmappable DQN training function.

  Args:
    config: the settings (validated here).

  Returns:
    `train(key) -> {"state": TrainState, "metrics": {...}}`. Metrics, with
    `I = total_env_steps // num_envs` iterations and
    `E = total_env_steps // eval_every` evaluations:
      "eval_env_steps" `[E]`: env steps at each greedy evaluation;
      "eval_return" `[E]`: mean greedy return of `eval_episodes` episodes;
      "epsilon" `[I]`: the exploration probability each iteration used;
      "loss" `[I]`: the loss of that iteration's gradient step (0 if none);
      "updated" `[I]`: whether a gradient step was taken;
      "target_updated" `[I]`: whether the target network was updated;
      "episode_return_sum" `[I]`, "episodes" `[I]`: the summed returns and
        the count of training episodes that ended in the iteration.

  Raises:
    ValueError: for a bad config, an unknown environment, or one without a
      discrete action space.
  """
  validate_config(config)
  env, env_params = make_env(config)
  num_actions = envs_lib.num_actions(env, env_params)
  network = make_network(config, num_actions)
  optimizer = make_optimizer(config)
  loss_fn = (
    value_learning.huber_loss
    if config.loss == "huber"
    else value_learning.l2_loss
  )
  num_envs = config.num_envs
  iters_per_eval = config.eval_every // num_envs
  num_evals = config.total_env_steps // config.eval_every

  def batch_loss(params, target_params, batch):
    td = td_errors(network, params, target_params, batch, config.double_dqn)
    return jnp.mean(loss_fn(td))

  def learn(state: TrainState, key: chex.PRNGKey):
    batch = replay.sample(key, state.buffer, config.batch_size, check=False)
    loss, grads = jax.value_and_grad(batch_loss)(
      state.params, state.target_params, batch
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    state = state._replace(
      params=params, opt_state=opt_state, num_updates=state.num_updates + 1
    )
    return state, loss

  def skip(state: TrainState, key: chex.PRNGKey):
    del key
    return state, jnp.zeros((), jnp.float32)

  def train(key: chex.PRNGKey) -> dict:
    # The incoming key is never rebound: every stream derives from it.
    init_key, reset_key, loop_key, eval_key = jax.random.split(key, 4)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(reset_key, num_envs), env_params
    )
    params = network.init(init_key, obs)
    example = Transition(
      obs=obs[0],
      action=jnp.zeros((), jnp.int32),
      reward=jnp.zeros((), jnp.float32),
      discount=jnp.zeros((), jnp.float32),
      next_obs=obs[0],
    )
    state = TrainState(
      params=params,
      target_params=params,
      opt_state=optimizer.init(params),
      buffer=replay.init(config.buffer_size, example),
      env_state=env_state,
      obs=obs,
      episode_return=jnp.zeros((num_envs,), jnp.float32),
      env_steps=jnp.zeros((), jnp.int32),
      num_updates=jnp.zeros((), jnp.int32),
    )

    def iteration(state: TrainState, unused):
      del unused
      step_key = jax.random.fold_in(loop_key, state.env_steps)
      act_key, env_key, learn_key = jax.random.split(step_key, 3)
      epsilon = linear_epsilon(
        state.env_steps,
        config.epsilon_start,
        config.epsilon_end,
        config.epsilon_decay_steps,
      )
      q_values = network.apply(state.params, state.obs)
      actions = jax.vmap(tabular.epsilon_greedy, in_axes=(0, 0, None))(
        jax.random.split(act_key, num_envs), q_values, epsilon
      )
      out = jax.vmap(lambda k, s, a: envs_lib.step(k, env, s, a, env_params))(
        jax.random.split(env_key, num_envs), state.env_state, actions
      )
      transitions = Transition(
        obs=state.obs,
        action=actions,
        reward=out.reward,
        discount=envs_lib.bootstrap_discount(out.terminated, config.gamma),
        next_obs=out.next_obs,
      )
      episode_return = state.episode_return + out.reward
      done = out.done
      steps_before = state.env_steps
      steps_after = steps_before + num_envs
      state = state._replace(
        buffer=replay.add(state.buffer, transitions),
        env_state=out.state,
        obs=out.obs,
        episode_return=jnp.where(done, 0.0, episode_return),
        env_steps=steps_after,
      )
      should_learn = (
        crossed_boundary(steps_before, steps_after, config.train_every)
        & (steps_after >= config.learning_starts)
        & replay.can_sample(state.buffer, config.batch_size)
      )
      state, loss = jax.lax.cond(should_learn, learn, skip, state, learn_key)
      target_params = update_target(
        state.params,
        state.target_params,
        steps_before,
        steps_after,
        config.target_period,
        config.target_update,
        config.tau,
      )
      state = state._replace(target_params=target_params)
      metrics = {
        "epsilon": epsilon,
        "loss": loss,
        "updated": should_learn,
        "target_updated": crossed_boundary(
          steps_before, steps_after, config.target_period
        ),
        "episode_return_sum": jnp.sum(jnp.where(done, episode_return, 0.0)),
        "episodes": jnp.sum(done.astype(jnp.int32)),
      }
      return state, metrics

    def eval_period(state: TrainState, index):
      state, metrics = jax.lax.scan(
        iteration, state, None, length=iters_per_eval
      )
      eval_return = evaluate(
        jax.random.fold_in(eval_key, index),
        network,
        state.params,
        env,
        env_params,
        config.eval_episodes,
      )
      metrics["eval_return"] = eval_return
      metrics["eval_env_steps"] = state.env_steps
      return state, metrics

    state, metrics = jax.lax.scan(eval_period, state, jnp.arange(num_evals))
    per_iteration = {
      name: value.reshape((-1,))
      for name, value in metrics.items()
      if name not in ("eval_return", "eval_env_steps")
    }
    per_iteration["eval_return"] = metrics["eval_return"]
    per_iteration["eval_env_steps"] = metrics["eval_env_steps"]
    return {"state": state, "metrics": per_iteration}

  return train


def q_values_at(config: DQNConfig, params: Any, obs: jax.Array) -> jax.Array:
  """Action values of a trained network at observations `[B, ...]` -> `[B, A]`.

  Raises:
    ValueError: as `make_env`.
  """
  env, env_params = make_env(config)
  network = make_network(config, envs_lib.num_actions(env, env_params))
  return network.apply(params, obs)
