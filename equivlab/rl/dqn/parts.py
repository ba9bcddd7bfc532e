"""What one DQN run is built of: environment, Q-network, optimizer, loss.

`build(config)` validates a `DQNConfig` and makes the static pieces the
jitted loop of `dqn.make_train` closes over (`DQNParts`: Python objects,
never traced); `q_values_at` applies a trained network.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from equivlab.rl import envs as envs_lib
from equivlab.rl import value_learning
from equivlab.rl.dqn.config import DQNConfig, validate_config


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


def make_env(config: DQNConfig):
  """The environment and its parameters (time limit applied), `(env, params)`.

  Raises:
    ValueError: for an unknown or continuous-action environment.
  """
  env, env_params = envs_lib.make(config.env_name, **dict(config.env_kwargs))
  if config.max_steps_in_episode is not None:
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


class DQNParts(NamedTuple):
  """The static pieces one run closes over (Python objects, never traced).

  Attributes:
    config: the validated settings.
    env: the gymnax environment.
    env_params: its parameters, time limit applied.
    network: the Q-network module.
    optimizer: Adam, after clipping when set.
    loss_fn: the elementwise loss of a TD error (huber or l2).
  """

  config: DQNConfig
  env: Any
  env_params: Any
  network: QNetwork
  optimizer: optax.GradientTransformation
  loss_fn: Callable[[jax.Array], jax.Array]


def build(config: DQNConfig) -> DQNParts:
  """Validates `config` and builds the environment, network and optimizer.

  The parts hold `config.resolved()`: the schedule defaults made numbers.

  Raises:
    TypeError, ValueError: as `validate_config` and `make_env`.
  """
  validate_config(config)
  config = config.resolved()
  env, env_params = make_env(config)
  return DQNParts(
    config=config,
    env=env,
    env_params=env_params,
    network=make_network(config, envs_lib.num_actions(env, env_params)),
    optimizer=make_optimizer(config),
    loss_fn=(
      value_learning.huber_loss
      if config.loss == "huber"
      else value_learning.l2_loss
    ),
  )


def q_values_at(config: DQNConfig, params: Any, obs: jax.Array) -> jax.Array:
  """Action values of a trained network at observations `[B, ...]` -> `[B, A]`.

  Raises:
    ValueError: as `make_env`, or for observations not shaped `[B,
      *obs_shape]` of the environment.
  """
  env, env_params = make_env(config)
  obs_shape = tuple(env.observation_space(env_params).shape)
  if tuple(jnp.shape(obs)[1:]) != obs_shape or jnp.ndim(obs) < 1:
    raise ValueError(
      f"obs must be [B, *{list(obs_shape)}] for {config.env_name}, got "
      f"shape {jnp.shape(obs)}."
    )
  network = make_network(config, envs_lib.num_actions(env, env_params))
  return network.apply(params, obs)
