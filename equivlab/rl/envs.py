"""Pure-JAX environments: a chain MDP, probes, and gymnax.

Every environment here is a gymnax `Environment`, so `env.step(key, state,
action, params)` returns `(obs, state, reward, terminated, truncated, info)`
(gymnax >= 1.0.1) and resets automatically when an episode ends. When it
does, `obs` is already the first observation of the next episode and the
last observation of the finished one is `info["final_observation"]`.

Bootstrapping rule (Pardo et al., 2018, "Time limits in RL"): a transition
cut by the time limit (truncated) still bootstraps from its final
observation; only a transition into a terminal state (terminated) cuts the
bootstrap. `step` below returns exactly what a TD target needs.
"""

import functools
import inspect
from typing import Any, NamedTuple

import chex
import gymnax
import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from equivlab.rl import keys as keys_lib
from equivlab.rl import validation

Array = chex.Array


# ----------------------------------------------------------------------------
# A chain MDP: a wall on the left, a terminal right end, a cost per step.


@struct.dataclass
class ChainState(environment.EnvState):
  position: jax.Array
  time: int


@struct.dataclass
class ChainParams(environment.EnvParams):
  start_position: int = 0
  max_steps_in_episode: int = 100


class ChainMDP(environment.Environment[ChainState, ChainParams]):
  """A chain: positions on a line, moves -1/+1, reward -1 per step.

  Positions are `0 .. num_states - 1`; the right end `num_states - 1` is
  terminal. Action index 0 moves by -1 (the left end is a wall: moving left
  from 0 stays at 0), action index 1 moves by +1. Every step costs -1, so
  with `gamma = 1` the optimal value of position `s` is
  `-(num_states - 1 - s)`. Observations are one-hot positions, float32
  `[num_states]`.
  """

  def __init__(self, num_states: int = 6):
    super().__init__()
    if not isinstance(num_states, int) or num_states < 2:
      raise ValueError(
        f"ChainMDP expects an integer num_states >= 2, got {num_states!r}."
      )
    self.num_states = num_states

  @property
  def default_params(self) -> ChainParams:
    return ChainParams()

  def step_env(self, key, state, action, params):
    del key
    move = 2 * jnp.asarray(action, jnp.int32) - 1
    position = jnp.clip(state.position + move, 0, self.num_states - 1)
    state = ChainState(position=position, time=state.time + 1)
    terminated = self.is_terminated(state, params)
    reward = jnp.asarray(-1.0, jnp.float32)
    return self.get_obs(state), state, reward, terminated, {}

  def reset_env(self, key, params):
    del key
    state = ChainState(
      position=jnp.asarray(params.start_position, jnp.int32), time=0
    )
    return self.get_obs(state), state

  def get_obs(self, state, params=None, key=None):
    return jax.nn.one_hot(state.position, self.num_states, dtype=jnp.float32)

  def is_terminated(self, state, params):
    return state.position == self.num_states - 1

  @property
  def name(self) -> str:
    return "ChainMDP"

  @property
  def num_actions(self) -> int:
    return 2

  def action_space(self, params=None) -> spaces.Discrete:
    return spaces.Discrete(2)

  def observation_space(self, params) -> spaces.Box:
    return spaces.Box(0.0, 1.0, (self.num_states,), jnp.float32)


# ----------------------------------------------------------------------------
# Probe environments (A. Jones, "Debugging RL without the agonizing pain").


@struct.dataclass
class ProbeState(environment.EnvState):
  time: int


@struct.dataclass
class ProbeParams(environment.EnvParams):
  max_steps_in_episode: int = 10


class ProbeEnv(environment.Environment[ProbeState, ProbeParams]):
  """Tiny environments whose action values are known in closed form.

  kinds:
    "constant": one observation, reward +1, the episode ends after one
      step: `Q = 1`.
    "two_step": observations one-hot in the time step, reward 0 then +1,
      termination after two steps: `Q(first) = gamma`, `Q(second) = 1`.
    "action_reward": one step; reward +1 for action 1 and -1 for action 0:
      `Q = [-1, 1]`, greedy action 1.
    "endless": reward +1 forever, never terminates; only the time limit
      (truncation) cuts episodes: `Q = 1 / (1 - gamma)` when bootstrapping
      through truncation, and 1 with `max_steps_in_episode = 1` when not.
  """

  KINDS = ("constant", "two_step", "action_reward", "endless")

  def __init__(self, kind: str = "constant"):
    super().__init__()
    if kind not in self.KINDS:
      raise ValueError(
        f"ProbeEnv kind must be one of {self.KINDS}, got {kind!r}."
      )
    self.kind = kind

  @property
  def default_params(self) -> ProbeParams:
    return ProbeParams()

  def step_env(self, key, state, action, params):
    del key
    state = ProbeState(time=state.time + 1)
    action = jnp.asarray(action, jnp.int32)
    if self.kind == "constant":
      reward = jnp.asarray(1.0)
    elif self.kind == "two_step":
      reward = jnp.where(state.time >= 2, 1.0, 0.0)
    elif self.kind == "action_reward":
      reward = jnp.where(action == 1, 1.0, -1.0)
    else:
      reward = jnp.asarray(1.0)
    terminated = self.is_terminated(state, params)
    obs = self.get_obs(state)
    return obs, state, reward.astype(jnp.float32), terminated, {}

  def reset_env(self, key, params):
    del key
    state = ProbeState(time=0)
    return self.get_obs(state), state

  def get_obs(self, state, params=None, key=None):
    if self.kind == "two_step":
      return jax.nn.one_hot(jnp.minimum(state.time, 1), 2, dtype=jnp.float32)
    return jnp.ones((1,), jnp.float32)

  def is_terminated(self, state, params):
    if self.kind == "two_step":
      return state.time >= 2
    if self.kind == "endless":
      return jnp.asarray(False)
    return state.time >= 1

  @property
  def name(self) -> str:
    return f"Probe-{self.kind}"

  @property
  def num_actions(self) -> int:
    return 2

  def action_space(self, params=None) -> spaces.Discrete:
    return spaces.Discrete(2)

  def observation_space(self, params) -> spaces.Box:
    size = 2 if self.kind == "two_step" else 1
    return spaces.Box(0.0, 1.0, (size,), jnp.float32)


# ----------------------------------------------------------------------------
# Construction and stepping.

_LOCAL_ENVS = {
  "ChainMDP": lambda **kw: ChainMDP(**kw),
  **{
    f"Probe-{kind}": (lambda kind=kind: ProbeEnv(kind))
    for kind in ProbeEnv.KINDS
  },
}


# The constructor options of the local environments (probes take none).
_LOCAL_OPTIONS = {"ChainMDP": ("num_states",)}


def _options(cls: type) -> tuple[str, ...] | None:
  """The keyword options of `cls`'s constructor; None if it takes any."""
  accepted = []
  for name, parameter in inspect.signature(cls.__init__).parameters.items():
    if parameter.kind is inspect.Parameter.VAR_KEYWORD:
      return None
    if name != "self" and parameter.kind in (
      inspect.Parameter.POSITIONAL_OR_KEYWORD,
      inspect.Parameter.KEYWORD_ONLY,
    ):
      accepted.append(name)
  return tuple(accepted)


def _check_options(name: str, accepted, env_kwargs: dict) -> None:
  """Raises for constructor options the environment does not take."""
  if accepted is None:
    return
  unknown = sorted(set(env_kwargs) - set(accepted))
  if unknown:
    takes = ", ".join(accepted) if accepted else "no options"
    raise ValueError(
      f"env_kwargs {unknown} are not options of {name!r}; it takes {takes}."
    )


def available_envs() -> tuple[str, ...]:
  """Names accepted by `make`: the local ones, then gymnax's."""
  return tuple(_LOCAL_ENVS) + tuple(gymnax.registered_envs)


def make(name: str, **env_kwargs: Any):
  """Builds a discrete-action environment by name.

  Args:
    name: "ChainMDP", "Probe-<kind>" (see `ProbeEnv`), or any registered
      gymnax id such as "CartPole-v1".
    **env_kwargs: passed to the environment's constructor (for example
      `num_states` for the chain).

  Returns:
    `(env, default_params)`.

  Raises:
    ValueError: for an unknown name or option (naming the options the
      environment takes), or an environment whose action space is not
      `Discrete` (value-based methods need a finite action set).
  """
  if not isinstance(name, str):
    raise ValueError(f"env name must be a string, got {name!r}.")
  if name in _LOCAL_ENVS:
    _check_options(name, _LOCAL_OPTIONS.get(name, ()), env_kwargs)
    env = _LOCAL_ENVS[name](**env_kwargs)
    params = env.default_params
  elif name in gymnax.registered_envs:
    if env_kwargs:
      _check_options(name, _options(type(gymnax.make(name)[0])), env_kwargs)
    env, params = gymnax.make(name, **env_kwargs)
  else:
    raise ValueError(
      f"Unknown environment {name!r}; expected one of {available_envs()}."
    )
  space = env.action_space(params)
  if not isinstance(space, spaces.Discrete):
    raise ValueError(
      f"{name} has action space {space!r}, but Q-learning needs a discrete "
      "(gymnax spaces.Discrete) action space."
    )
  return env, params


def num_actions(env, params) -> int:
  """The number of discrete actions of `env`."""
  return int(env.action_space(params).n)


class Step(NamedTuple):
  """What an agent needs from one environment step.

  Attributes:
    obs: the observation to act on next (a reset one after an episode end).
    state: the environment state matching `obs`.
    reward: the reward of the transition, `[]`.
    next_obs: the observation the transition led to, BEFORE any automatic
      reset (gymnax's `info["final_observation"]`): the one to bootstrap
      from.
    terminated: the transition entered a terminal state: no bootstrap.
    truncated: the time limit cut the episode: bootstrap from `next_obs`.
  """

  obs: Any
  state: Any
  reward: Array
  next_obs: Any
  terminated: Array
  truncated: Array

  @property
  def done(self) -> Array:
    """Whether an episode ended here, for either reason."""
    return jnp.logical_or(self.terminated, self.truncated)


def step(
  key: chex.PRNGKey,
  env,
  state,
  action,
  params,
  *,
  reset_key: chex.PRNGKey | None = None,
) -> Step:
  """Steps a gymnax environment and keeps the pre-reset observation.

  Args:
    key: a PRNG key. Without `reset_key`, gymnax's `env.step` splits it
      into the transition's and the reset's key.
    env: a gymnax environment.
    state: its state.
    action: an action index, `[]` int.
    params: its parameters.
    reset_key: the key of the automatic reset, if the caller drew it (then
      `key` goes to the transition as it is; the same auto-reset as
      gymnax's `env.step`, without its key split).

  Returns:
    A `Step`.

  Raises:
    ValueError: for a key that is not one PRNG key, or a concrete action
      outside `[0, num_actions)`.
  """
  keys_lib.check_key(key)
  if reset_key is not None:
    keys_lib.check_key(reset_key, "reset_key")
  _check_action(env, params, action)
  if reset_key is None:
    obs, state, reward, terminated, truncated, info = env.step(
      key, state, action, params
    )
    return Step(
      obs=obs,
      state=state,
      reward=jnp.asarray(reward, jnp.float32),
      next_obs=info["final_observation"],
      terminated=jnp.asarray(terminated, bool),
      truncated=jnp.asarray(truncated, bool),
    )
  out = transition(key, env, state, action, params)
  return auto_reset(out, env.reset_env(reset_key, params))


def _check_action(env, params, action) -> None:
  """An integer action index in `[0, num_actions)` (when concrete)."""
  space = env.action_space(params)
  if isinstance(space, spaces.Discrete):
    validation.check_index("action", action, int(space.n), "actions")


def reset_batch(env, keys: chex.PRNGKey, params) -> tuple[Any, Any]:
  """`env.reset_env(key, params)` for every key of `keys` (any leading axes).

  Args:
    env: a gymnax environment.
    keys: typed keys `[...]`, legacy uint32 keys `[..., 2]`, or a list of
      single keys (stacked into `[S]`).
    params: its parameters.

  Returns:
    `(obs, state)` with leaves `[*batch_shape, ...]`.

  Raises:
    ValueError: for anything else as `keys`.
  """
  if isinstance(keys, list | tuple):
    keys = keys_lib.as_keys(keys)
  dtype = getattr(keys, "dtype", None)
  if dtype is None or not (
    jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    or (dtype == jnp.uint32 and jnp.ndim(keys) >= 1)
  ):
    raise ValueError(
      "keys must be typed PRNG keys [...], legacy uint32 keys [..., 2] or "
      f"a list of keys, got {type(keys).__name__} "
      f"{getattr(keys, 'shape', '')} {dtype or ''}."
    )
  reset = functools.partial(env.reset_env, params=params)
  typed = jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
  for _ in range(keys.ndim if typed else keys.ndim - 1):
    reset = jax.vmap(reset)
  return reset(keys)


def auto_reset(out: Step, reset: tuple[Any, Any]) -> Step:
  """`out` continued from `reset = (obs, state)` where its episode ended.

  `step(key, ..., reset_key=k)` is `auto_reset(transition(key, ...),
  env.reset_env(k, params))`; callers that step many environments can
  compute the resets only when some episode ended (`dqn.step_envs`).
  `next_obs` keeps the observation reached.
  """
  obs_reset, state_reset = reset

  def select(reset_leaf, step_leaf):
    return jax.lax.select(out.done, reset_leaf, step_leaf)

  return out._replace(
    obs=jax.tree.map(select, obs_reset, out.obs),
    state=jax.tree.map(select, state_reset, out.state),
  )


def transition(key: chex.PRNGKey, env, state, action, params) -> Step:
  """One step WITHOUT the automatic reset (`obs` equals `next_obs`).

  For rollouts that stop where an episode ends (greedy evaluation): it
  skips the reset and its random draw; after the end the state is
  meaningless and must be masked by the caller.

  Args:
    key: the transition's PRNG key (passed to `env.step_env` as it is).
    env: a gymnax environment.
    state: its state.
    action: an action index, `[]` int.
    params: its parameters.

  Returns:
    A `Step` whose `obs` and `next_obs` are the observation reached.

  Raises:
    ValueError: as `step`.
  """
  keys_lib.check_key(key)
  _check_action(env, params, action)
  obs, state, reward, terminated, _ = env.step_env(key, state, action, params)
  return Step(
    obs=obs,
    state=state,
    reward=jnp.asarray(reward, jnp.float32),
    next_obs=obs,
    terminated=jnp.asarray(terminated, bool),
    truncated=jnp.asarray(env.is_truncated(state, params), bool),
  )


def bootstrap_discount(terminated: Array, gamma: chex.Numeric) -> Array:
  """`gamma` unless the transition terminated, then 0 (truncation keeps it).

  Args:
    terminated: whether the next state is terminal, `[...]` bool.
    gamma: the discount factor.

  Returns:
    float32 discounts `[...]`.

  Raises:
    ValueError: for a concrete `gamma` outside `[0, 1]`.
  """
  validation.check_probability("gamma", gamma)
  return jnp.where(terminated, 0.0, gamma).astype(jnp.float32)
