"""DQN with a target network, the whole training loop under `jax.jit`.

`make_train(config)` returns a pure `train(key)` whose every part runs inside
`lax.scan`, so seeds batch with `jax.jit(jax.vmap(train))(keys)`. One
iteration of the loop reads as the algorithm:

- `act`: epsilon-greedy actions in `num_envs` parallel environments;
- `step_envs`: one step of every environment (auto-reset);
- `store`: the transitions into the replay buffer, episode returns;
- `maybe_learn`: one gradient step on a sampled batch when due (`learn`);
- `update_target`: the target network when a period boundary is crossed;

and after every `eval_every` env steps, `evaluate` runs greedy episodes.
Mnih et al. (2015); double DQN from van Hasselt, Guez & Silver (2016); the
`make_train` layout follows purejaxrl.

One iteration steps all `num_envs` environments once, so the env-step
counter `t` grows by `num_envs`. Periodic events (a gradient step every
`train_every` env steps, a target update every `target_period` env steps)
fire when an iteration CROSSES a multiple of the period, i.e. when
`(t + num_envs) // period > t // period`, which is right for any number of
environments (a test for `t % period == 0` would never fire for, say, 3
environments and a period of 10 at t = 10, 20, ...).

For runs that stop and resume, `make_loop(config)` gives the same loop in
pieces: `init(key)` and `run_periods(key, state, periods)`, whose whole
state a caller can save between evaluation periods; consecutive chunks of
periods give the same bits as `make_train` (`dqn.driver.train_resumable`
checkpoints that way).

Divergence is never silent: every iteration records whether its loss and
the Q-values it acted on were finite (`metrics["finite"]`), the result
carries `metrics["diverged"]`, and `raise_if_diverged(metrics)` turns it
into a `FloatingPointError` naming the first bad env step.

How the loop is laid out for XLA:CPU: every random number an evaluation
period needs is drawn in two bulk calls at its start (`noise.draw_noise`),
not in small calls per iteration, each of which XLA:CPU lowers to a loop of
its own; the environments' automatic resets, whose draws are such loops
too, are computed for a block of iterations at once (`reset_block`);
replay writes are one contiguous block per iteration when `num_envs`
divides `buffer_size`; greedy evaluation steps without the automatic
reset. `benchmarks/dqn.py` times the loop.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from equivlab.rl import envs as envs_lib
from equivlab.rl import keys as keys_lib
from equivlab.rl import noise, replay, tabular, value_learning
from equivlab.rl.dqn.config import DQNConfig
from equivlab.rl.dqn.metrics import flatten_metrics
from equivlab.rl.dqn.parts import (
  DQNParts,
  QNetwork,
  build,
)
from equivlab.rl.evaluation import evaluate
from equivlab.rl.schedules import (
  crossed_boundary,
  linear_epsilon,
  reset_block,
  update_target,
)

__all__ = [
  "DQNLoop",
  "DQNState",
  "Transition",
  "act",
  "batch_loss",
  "init_state",
  "iteration",
  "learn",
  "make_loop",
  "make_train",
  "maybe_learn",
  "step_envs",
  "store",
  "td_errors",
  "train_then_evaluate",
]


class Transition(NamedTuple):
  """One stored transition; `next_obs` is the pre-reset observation."""

  obs: jax.Array
  action: jax.Array
  reward: jax.Array
  discount: jax.Array
  next_obs: jax.Array


class DQNState(NamedTuple):
  """The scan carry of the DQN loop (not the supervised `train.TrainState`).

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


# ----------------------------------------------------------------------------
# The TD errors of a batch (construction: `dqn_parts.py`; schedules:
# `schedules.py`; evaluation: `evaluation.py`).


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
# The algorithm, one named step at a time.


def init_state(
  parts: DQNParts, init_key: chex.PRNGKey, reset_key: chex.PRNGKey
) -> DQNState:
  """Fresh networks, optimizer, an empty buffer and reset environments."""
  config = parts.config
  obs, env_state = jax.vmap(parts.env.reset, in_axes=(0, None))(
    jax.random.split(reset_key, config.num_envs), parts.env_params
  )
  params = parts.network.init(init_key, obs)
  example = Transition(
    obs=obs[0],
    action=jnp.zeros((), jnp.int32),
    reward=jnp.zeros((), jnp.float32),
    discount=jnp.zeros((), jnp.float32),
    next_obs=obs[0],
  )
  return DQNState(
    params=params,
    target_params=params,
    opt_state=parts.optimizer.init(params),
    buffer=replay.init(config.buffer_size, example),
    env_state=env_state,
    obs=obs,
    episode_return=jnp.zeros((config.num_envs,), jnp.float32),
    env_steps=jnp.zeros((), jnp.int32),
    num_updates=jnp.zeros((), jnp.int32),
  )


def act(
  parts: DQNParts,
  params: Any,
  obs: jax.Array,
  epsilon: jax.Array,
  draws: noise.IterationNoise,
) -> tuple[jax.Array, jax.Array]:
  """Epsilon-greedy actions for every environment (Mnih et al. 2015).

  Args:
    parts: the run's static pieces.
    params: the online parameters.
    obs: observations `[num_envs, ...]`.
    epsilon: the exploration probability, `[]`.
    draws: this iteration's random numbers (`explore`, `action_bits`).

  Returns:
    `(actions [num_envs] int32, q_values [num_envs, A])`.
  """
  q_values = parts.network.apply(params, obs)
  random_actions = noise.randint_from_bits(
    draws.action_bits[0], draws.action_bits[1], q_values.shape[-1]
  )
  actions = jax.vmap(tabular.epsilon_greedy_from_draws, (0, None, 0, 0))(
    q_values, epsilon, draws.explore, random_actions
  )
  return actions, q_values


def step_envs(
  parts: DQNParts,
  env_state: Any,
  actions: jax.Array,
  draws: noise.IterationNoise,
  resets: tuple[Any, Any] | None = None,
) -> envs_lib.Step:
  """Steps every environment once (auto-reset); leaves `[num_envs, ...]`.

  Args:
    parts: the run's static pieces.
    env_state: the environments' states.
    actions: one action per environment, `[num_envs]`.
    draws: this iteration's random numbers (`step_keys`, `reset_keys`).
    resets: `(obs, state)` of the automatic resets, leaves `[num_envs,
      ...]`, as `envs.reset_batch` gives them for `draws.reset_keys`; None to
      compute them here.
  """
  env, env_params = parts.env, parts.env_params
  if resets is None:
    resets = envs_lib.reset_batch(env, draws.reset_keys, env_params)

  def one(step_key, state, action):
    return envs_lib.transition(step_key, env, state, action, env_params)

  out = jax.vmap(one)(draws.step_keys, env_state, actions)
  return jax.vmap(envs_lib.auto_reset)(out, resets)


def store(
  parts: DQNParts, state: DQNState, actions: jax.Array, out: envs_lib.Step
) -> tuple[DQNState, dict]:
  """Writes the transitions to replay and advances the environments.

  Returns:
    The state after the step (env steps counted) and the training-episode
    metrics `{"episode_return_sum": [], "episodes": []}` of the episodes
    that ended here.
  """
  config = parts.config
  transitions = Transition(
    obs=state.obs,
    action=actions,
    reward=out.reward,
    discount=envs_lib.bootstrap_discount(out.terminated, config.gamma),
    next_obs=out.next_obs,
  )
  episode_return = state.episode_return + out.reward
  done = out.done
  # Every write is num_envs rows: a contiguous block whenever they tile
  # the ring (the rows are the same as the scatter's).
  contiguous = config.buffer_size % config.num_envs == 0
  state = state._replace(
    buffer=replay.add(state.buffer, transitions, contiguous=contiguous),
    env_state=out.state,
    obs=out.obs,
    episode_return=jnp.where(done, 0.0, episode_return),
    env_steps=state.env_steps + config.num_envs,
  )
  metrics = {
    "episode_return_sum": jnp.sum(jnp.where(done, episode_return, 0.0)),
    "episodes": jnp.sum(done.astype(jnp.int32)),
  }
  return state, metrics


def batch_loss(
  parts: DQNParts, params: Any, target_params: Any, batch: Transition
) -> jax.Array:
  """The mean loss of the (double) Q-learning TD errors of a batch, `[]`."""
  td = td_errors(
    parts.network, params, target_params, batch, parts.config.double_dqn
  )
  return jnp.mean(parts.loss_fn(td))


def learn(
  parts: DQNParts,
  params: Any,
  opt_state: Any,
  target_params: Any,
  buffer: replay.ReplayState,
  sample_bits: jax.Array,
) -> tuple[Any, Any, jax.Array]:
  """One gradient step on a uniformly sampled batch.

  Args:
    parts: the run's static pieces.
    params: the online parameters.
    opt_state: the optimizer state.
    target_params: the target parameters.
    buffer: the replay buffer; it holds a batch (`maybe_learn` sees to it).
    sample_bits: uint32 `[2, batch_size]` choosing the replay rows.

  Returns:
    `(params, opt_state, loss)` after the step.
  """
  batch = replay.sample_with_bits(sample_bits, buffer, check=False)
  loss, grads = jax.value_and_grad(functools.partial(batch_loss, parts))(
    params, target_params, batch
  )
  updates, opt_state = parts.optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def maybe_learn(
  parts: DQNParts,
  state: DQNState,
  steps_before: jax.Array,
  sample_bits: jax.Array,
) -> tuple[DQNState, jax.Array, jax.Array]:
  """`learn` when the iteration crossed a `train_every` boundary.

  Learning also waits for `learning_starts` env steps and a batch in the
  buffer. The condition depends on counters only, which stay unbatched
  under `vmap` over seeds, so `lax.cond` stays a real branch there. Only
  what a step changes (parameters, optimizer state) passes through the
  branch; the replay buffer is read inside it but is no output of it, so
  XLA need not copy the buffer on every iteration.

  Returns:
    `(state, loss, updated)`; the loss is 0 when no step was taken.
  """
  config = parts.config
  should_learn = (
    crossed_boundary(steps_before, state.env_steps, config.train_every)
    & (state.env_steps >= config.learning_starts)
    & replay.can_sample(state.buffer, config.batch_size)
  )

  def step(params, opt_state):
    return learn(
      parts, params, opt_state, state.target_params, state.buffer, sample_bits
    )

  def skip(params, opt_state):
    return params, opt_state, jnp.zeros((), jnp.float32)

  params, opt_state, loss = jax.lax.cond(
    should_learn, step, skip, state.params, state.opt_state
  )
  state = state._replace(
    params=params,
    opt_state=opt_state,
    num_updates=state.num_updates + should_learn.astype(jnp.int32),
  )
  return state, loss, should_learn


def iteration(
  parts: DQNParts,
  state: DQNState,
  draws: noise.IterationNoise,
  resets: tuple[Any, Any] | None = None,
) -> tuple[DQNState, dict]:
  """One loop iteration: act, step, store, maybe learn, maybe update target.

  Args:
    parts: the run's static pieces.
    state: the carry.
    draws: this iteration's random numbers (the `lax.scan` slice).
    resets: this iteration's automatic resets (see `step_envs`), or None.

  Returns:
    `(state, metrics)` with the per-iteration metrics of `make_train`.
  """
  config = parts.config
  epsilon = linear_epsilon(
    state.env_steps,
    config.epsilon_start,
    config.epsilon_end,
    config.epsilon_decay_steps,
  )
  actions, q_values = act(parts, state.params, state.obs, epsilon, draws)
  out = step_envs(parts, state.env_state, actions, draws, resets)
  steps_before = state.env_steps
  state, episode_metrics = store(parts, state, actions, out)
  state, loss, updated = maybe_learn(
    parts, state, steps_before, draws.sample_bits
  )
  state = state._replace(
    target_params=update_target(
      state.params,
      state.target_params,
      steps_before,
      state.env_steps,
      config.target_period,
      config.target_update,
      config.tau,
    )
  )
  metrics = {
    "epsilon": epsilon,
    "loss": loss,
    "updated": updated,
    "target_updated": crossed_boundary(
      steps_before, state.env_steps, config.target_period
    ),
    "finite": jnp.isfinite(loss) & jnp.all(jnp.isfinite(q_values)),
    **episode_metrics,
  }
  return state, metrics


def train_then_evaluate(
  parts: DQNParts,
  run_key: chex.PRNGKey,
  eval_key: chex.PRNGKey,
  state: DQNState,
  index: jax.Array,
) -> tuple[DQNState, dict]:
  """`eval_every` env steps of training, then one greedy evaluation.

  The period's random numbers are drawn up front, from `run_key` folded
  with the period's index; the environments' automatic resets are computed
  a block of iterations at a time (`reset_block`).
  """
  config = parts.config
  num_iterations = config.eval_every // config.num_envs
  draws = noise.draw_noise(
    jax.random.fold_in(run_key, index),
    num_iterations,
    config.num_envs,
    config.batch_size,
  )
  block = reset_block(num_iterations)

  def run_block(state, block_draws):
    resets = envs_lib.reset_batch(
      parts.env, block_draws.reset_keys, parts.env_params
    )
    return jax.lax.scan(
      lambda state, xs: iteration(parts, state, *xs),
      state,
      (block_draws, resets),
    )

  blocks = jax.tree.map(
    lambda x: x.reshape(num_iterations // block, block, *x.shape[1:]), draws
  )
  state, metrics = jax.lax.scan(run_block, state, blocks)
  metrics = jax.tree.map(
    lambda m: m.reshape(num_iterations, *m.shape[2:]), metrics
  )
  metrics["eval_return"] = evaluate(
    jax.random.fold_in(eval_key, index),
    parts.network,
    state.params,
    parts.env,
    parts.env_params,
    config.eval_episodes,
  )
  metrics["eval_env_steps"] = state.env_steps
  return state, metrics


class DQNLoop(NamedTuple):
  """The training loop in pieces, for runs that stop and resume.

  `make_train(config)(key)` is `run_periods(key, init(key),
  jnp.arange(num_periods))` with the metrics flattened by
  `flatten_metrics`; running the periods in consecutive chunks instead (the
  state carried, saved and restored between them) gives the same bits.
  Across seeds, vmap both with `state_axes` as the state's axes (`in_axes=
  (0, state_axes, None)`, `out_axes=(state_axes, 0)`): the result is then
  bit for bit that of `jax.vmap(make_train(config))`.

  Attributes:
    init: `init(key) -> DQNState`, the state before the first period.
    run_periods: `run_periods(key, state, periods) -> (state, metrics)`:
      one evaluation period (`eval_every` env steps, then a greedy
      evaluation) for each index in `periods` (int32 `[P]`, consecutive,
      counted from 0); metrics leaves `[P, eval_every // num_envs]`, and
      `[P]` for "eval_return" and "eval_env_steps".
    num_periods: evaluation periods in a whole run.
    state_axes: a `DQNState` of 0 (a leaf that differs from seed to seed)
      and None (the counters every seed shares: env steps, updates, the
      buffer's position and size, the optimizer's step count). Kept
      unbatched under `vmap`, they keep `maybe_learn`'s `lax.cond` a real
      branch instead of a select that computes a gradient step every
      iteration, and the arithmetic that of `vmap(make_train(config))`.
  """

  init: Callable[[chex.PRNGKey], DQNState]
  run_periods: Callable[[chex.PRNGKey, DQNState, jax.Array], tuple]
  num_periods: int
  state_axes: DQNState


def make_loop(config: DQNConfig) -> DQNLoop:
  """Builds the pure, jittable, vmappable pieces of the DQN loop.

  Every random stream derives from the key handed to both pieces (never
  rebound or consumed), so a resumed run needs only the key and the state.

  Raises:
    TypeError, ValueError: as `make_train`.
  """
  parts = build(config)

  def init(key: chex.PRNGKey) -> DQNState:
    keys_lib.check_key(key, hint=_BATCH_HINT)
    init_key, reset_key, _, _ = jax.random.split(key, 4)
    return init_state(parts, init_key, reset_key)

  def run_periods(key: chex.PRNGKey, state: DQNState, periods: jax.Array):
    keys_lib.check_key(key, hint=_BATCH_HINT)
    _, _, run_key, eval_key = jax.random.split(key, 4)
    period = functools.partial(train_then_evaluate, parts, run_key, eval_key)
    return jax.lax.scan(period, state, periods)

  return DQNLoop(
    init=init,
    run_periods=run_periods,
    num_periods=config.total_env_steps // config.eval_every,
    state_axes=_state_axes(jax.eval_shape(init, jax.random.key(0))),
  )


_BATCH_HINT = (
  "For many seeds, jax.vmap the function over the keys, or call "
  "dqn.train_seeds(config, keys)."
)


def _state_axes(state: DQNState) -> DQNState:
  """0 for the leaves that differ between seeds, None for shared counters.

  The shared ones: env steps, gradient steps, the buffer's position and
  size, and the optimizer's step counts (its integer leaves), all advanced
  by the schedule alone.
  """
  axes = jax.tree.map(lambda _: 0, state)
  opt_axes = jax.tree.map(
    lambda leaf: None if jnp.issubdtype(leaf.dtype, jnp.integer) else 0,
    state.opt_state,
  )
  return axes._replace(
    opt_state=opt_axes,
    buffer=axes.buffer._replace(position=None, size=None),
    env_steps=None,
    num_updates=None,
  )


def make_train(config: DQNConfig) -> Callable[[chex.PRNGKey], dict]:
  """Builds the pure, jittable, vmappable DQN training function.

  Args:
    config: the settings (validated here).

  Returns:
    `train(key) -> {"state": DQNState, "metrics": {...}}`. The key is never
    rebound or consumed; every stream derives from it. Metrics, with
    `I = total_env_steps // num_envs` iterations and
    `E = total_env_steps // eval_every` evaluations:

    - "eval_env_steps" `[E]`: env steps at each greedy evaluation;
    - "eval_return" `[E]`: mean greedy return of `eval_episodes` episodes;
    - "epsilon" `[I]`: the exploration probability each iteration used;
    - "loss" `[I]`: the loss of that iteration's gradient step (0 if none);
    - "updated" `[I]`: whether a gradient step was taken;
    - "target_updated" `[I]`: whether the target network was updated;
    - "episode_return_sum" `[I]`, "episodes" `[I]`: the summed returns and
      the count of training episodes that ended in the iteration;
    - "finite" `[I]`: the loss and the acting Q-values were all finite;
    - "diverged" `[]`: some iteration was not finite. Check it (or call
      `raise_if_diverged(metrics)`) before trusting the returns: a NaN
      network acts greedily with action 0 and trains on.

  Raises:
    TypeError, ValueError: for a bad config, an unknown environment or
      option, or one without a discrete action space; `train` raises a
      ValueError for a key that is not one PRNG key (a typed key `[]` or a
      legacy uint32 `[2]`).
  """
  loop = make_loop(config)

  def train(key: chex.PRNGKey) -> dict:
    periods = jnp.arange(loop.num_periods)
    state, metrics = loop.run_periods(key, loop.init(key), periods)
    return {"state": state, "metrics": flatten_metrics(metrics)}

  return train
