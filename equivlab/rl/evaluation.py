"""Greedy evaluation episodes of a Q-network, inside `jit`.

`evaluate` runs `num_episodes` greedy episodes in parallel under one
`lax.while_loop` that stops when every episode has ended (or at the time
limit), so it can sit inside a training `lax.scan`. Episodes step without
the automatic reset (`envs.transition`): nothing after an episode's end is
counted, and the reset's random draw is saved.
"""

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from equivlab import checks
from equivlab.rl import envs
from equivlab.rl import keys as keys_lib


def evaluate(
  key: chex.PRNGKey,
  network: nn.Module,
  params: Any,
  env,
  env_params,
  num_episodes: int,
) -> jax.Array:
  """Mean undiscounted return of `num_episodes` greedy episodes.

  Each episode runs until it terminates or hits the time limit.

  Args:
    key: a PRNG key.
    network: the Q-network module (`apply(params, obs) -> [B, A]`).
    params: its parameters.
    env: a gymnax environment.
    env_params: its parameters.
    num_episodes: how many episodes, run in parallel.

  Returns:
    The mean return, float32 `[]`.

  Raises:
    TypeError, ValueError: for a key that is not one PRNG key, or
      `num_episodes` not an int >= 1.
  """
  keys_lib.check_key(key)
  checks.check_int("num_episodes", num_episodes, minimum=1)
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
    # No automatic reset: an episode that ended is masked from then on.
    out = jax.vmap(lambda k, s, a: envs.transition(k, env, s, a, env_params))(
      step_keys, env_state, actions
    )
    returns = returns + jnp.where(active, out.reward, 0.0)
    active = active & ~out.done
    return out.obs, out.state, returns, active, step + 1

  carry = (obs, env_state, zeros, active, jnp.zeros((), jnp.int32))
  _, _, returns, _, _ = jax.lax.while_loop(cond, body, carry)
  return jnp.mean(returns)
