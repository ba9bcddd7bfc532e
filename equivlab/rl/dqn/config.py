"""The DQN settings and their eager validation.

`DQNConfig` checks every field when it is built (`__post_init__` calls
`validate_config`), so a bad setting fails at once with a `ValueError` (or a
`TypeError` for a value of the wrong kind) that names the field, what was
expected and what was received, never as a NaN or a raw XLA error later.
Only the environment itself (its name, its action space) is checked when
`dqn.make_train` builds it.

The exploration and warm-up schedules default to fractions of the run
(`learning_starts` and `epsilon_decay_steps` None): the same config suits a
20k-step try and a 300k-step run. `DQNConfig.resolved()` gives the values
a run uses.
"""

import dataclasses
from collections.abc import Mapping, Sequence

from equivlab import checks

# The schedule defaults, as fractions of `total_env_steps`: at the default
# 300k env steps, learning starts after 10k steps and epsilon decays over
# the first 100k (Mnih et al. 2015 decay over the first 1M of 50M frames;
# short runs need a larger share to learn at all).
LEARNING_STARTS_DIVISOR = 30
EPSILON_DECAY_DIVISOR = 3


def default_learning_starts(total_env_steps: int) -> int:
  """`total_env_steps // 30`: the warm-up when `learning_starts` is None."""
  return total_env_steps // LEARNING_STARTS_DIVISOR


def default_epsilon_decay_steps(total_env_steps: int) -> int:
  """`max(1, total_env_steps // 3)`: the decay when the field is None."""
  return max(1, total_env_steps // EPSILON_DECAY_DIVISOR)


@dataclasses.dataclass(frozen=True)
class DQNConfig:
  """Every DQN setting; env steps count transitions summed over envs.

  Attributes:
    env_name: "CartPole-v1" or any name `envs.make` accepts.
    env_kwargs: constructor arguments as `(name, value)` pairs (a mapping
      is stored as its sorted pairs).
    max_steps_in_episode: overrides the environment's time limit if set.
    num_envs: parallel environments stepped per iteration.
    total_env_steps: the training budget in env steps.
    hidden_sizes: widths of the Q-network's hidden layers (may be empty).
    learning_rate: Adam's step size, > 0.
    max_grad_norm: global-norm gradient clipping (> 0), or None.
    gamma: the discount factor in `[0, 1]`.
    loss: "huber" or "l2" on the TD error.
    double_dqn: select next actions with the online network, value them
      with the target network.
    buffer_size: replay capacity (>= batch_size).
    batch_size: transitions per gradient step.
    learning_starts: env steps before the first gradient step, less than
      `total_env_steps` (else no step would be taken); None for
      `total_env_steps // 30` (10k of the default 300k).
    train_every: env steps between gradient steps (>= num_envs).
    target_update: "hard" (copy every `target_period` env steps, via
      `optax.periodic_update`) or "polyak" (`optax.incremental_update` with
      step size `tau` every `target_period` env steps).
    target_period: env steps between target updates, >= 1.
    tau: Polyak step size in `(0, 1]` (ignored for "hard").
    epsilon_start: exploration probability at step 0, in `[0, 1]`.
    epsilon_end: exploration probability after the decay, in `[0, 1]`.
    epsilon_decay_steps: env steps of the linear decay, >= 1 (a value
      above `total_env_steps` leaves epsilon above `epsilon_end` at the
      end); None for `max(1, total_env_steps // 3)` (100k of 300k).
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
  learning_starts: int | None = None
  train_every: int = 8
  target_update: str = "hard"
  target_period: int = 500
  tau: float = 1.0
  epsilon_start: float = 1.0
  epsilon_end: float = 0.05
  epsilon_decay_steps: int | None = None
  eval_every: int = 10_000
  eval_episodes: int = 10

  def __post_init__(self):
    # A list of widths is accepted and stored as a tuple (hashable), and a
    # mapping of env_kwargs (a JSON flag) as its sorted (name, value) pairs.
    if isinstance(self.hidden_sizes, list):
      object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
    if isinstance(self.env_kwargs, Mapping):
      pairs = tuple(sorted(self.env_kwargs.items()))
      object.__setattr__(self, "env_kwargs", pairs)
    validate_config(self)

  def resolved(self) -> "DQNConfig":
    """This config with the schedule defaults (None) made numbers.

    Returns:
      A config of the same class whose `learning_starts` and
      `epsilon_decay_steps` are ints: the given ones, or for None
      `default_learning_starts` / `default_epsilon_decay_steps` of
      `total_env_steps`. The loop runs on this config.
    """
    changes = {}
    if self.learning_starts is None:
      changes["learning_starts"] = default_learning_starts(self.total_env_steps)
    if self.epsilon_decay_steps is None:
      changes["epsilon_decay_steps"] = default_epsilon_decay_steps(
        self.total_env_steps
      )
    return dataclasses.replace(self, **changes) if changes else self


_POSITIVE_INTS = (
  "num_envs",
  "total_env_steps",
  "buffer_size",
  "batch_size",
  "train_every",
  "target_period",
  "eval_every",
  "eval_episodes",
)


def validate_config(config: DQNConfig) -> None:
  """Checks every field of a config and how the fields fit together.

  Args:
    config: the settings.

  Raises:
    TypeError: for a config that is not a `DQNConfig`, or a field of the
      wrong kind (a string where a number is expected, a float step
      count, ...), naming the field.
    ValueError: for an out-of-range, non-finite or inconsistent setting,
      naming the field, the expected and the received value.
  """
  if not isinstance(config, DQNConfig):
    raise TypeError(
      f"config must be a dqn.DQNConfig, got {type(config).__name__}: build "
      "one with dqn.DQNConfig(**settings)."
    )
  _check_environment_fields(config)
  for name in _POSITIVE_INTS:
    checks.check_int(name, getattr(config, name), minimum=1)
  checks.check_int(
    "learning_starts", config.learning_starts, minimum=0, allow_none=True
  )
  checks.check_int(
    "epsilon_decay_steps",
    config.epsilon_decay_steps,
    minimum=1,
    allow_none=True,
  )
  checks.check_ints(
    "hidden_sizes", config.hidden_sizes, minimum=1, nonempty=False
  )
  if not isinstance(config.hidden_sizes, tuple):
    raise TypeError(
      f"hidden_sizes must be a tuple of ints, got {config.hidden_sizes!r}."
    )
  checks.check_number(
    "learning_rate", config.learning_rate, minimum=0.0, strict_minimum=True
  )
  checks.check_number(
    "max_grad_norm",
    config.max_grad_norm,
    minimum=0.0,
    strict_minimum=True,
    allow_none=True,
  )
  _check_unit_interval("gamma", config.gamma)
  _check_unit_interval("epsilon_start", config.epsilon_start)
  _check_unit_interval("epsilon_end", config.epsilon_end)
  checks.check_number("tau", config.tau)
  if not 0.0 < config.tau <= 1.0:
    raise ValueError(f"tau must lie in (0, 1], got {config.tau!r}.")
  checks.check_choice("loss", config.loss, ("huber", "l2"))
  if config.target_update not in ("hard", "polyak"):
    raise ValueError(
      f"target_update must be 'hard' or 'polyak', got {config.target_update!r}."
    )
  if not isinstance(config.double_dqn, bool):
    raise TypeError(
      f"double_dqn must be a bool, got {config.double_dqn!r} "
      f"({type(config.double_dqn).__name__})."
    )
  _check_consistency(config)


def _check_unit_interval(name: str, value) -> None:
  """A finite real number in `[0, 1]`; the message says 'must lie in'."""
  checks.check_number(name, value)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name} must lie in [0, 1], got {value!r}.")


def _check_environment_fields(config: DQNConfig) -> None:
  if not isinstance(config.env_name, str):
    raise TypeError(
      f"env_name must be a string such as 'CartPole-v1', got "
      f"{config.env_name!r}."
    )
  pairs = config.env_kwargs
  if not isinstance(pairs, tuple) or not all(
    isinstance(p, Sequence)
    and not isinstance(p, str)
    and len(p) == 2
    and isinstance(p[0], str)
    for p in pairs
  ):
    raise TypeError(
      "env_kwargs must be a tuple of (name, value) pairs such as "
      f"(('num_states', 5),), got {pairs!r}."
    )
  checks.check_int(
    "max_steps_in_episode",
    config.max_steps_in_episode,
    minimum=1,
    allow_none=True,
  )


def _check_consistency(config: DQNConfig) -> None:
  """The checks that relate two fields."""
  if config.buffer_size < config.batch_size:
    raise ValueError(
      f"buffer_size must be at least batch_size ({config.batch_size}), got "
      f"{config.buffer_size}."
    )
  if config.buffer_size < config.num_envs:
    raise ValueError(
      f"buffer_size must hold one step of all num_envs ({config.num_envs}), "
      f"got {config.buffer_size}."
    )
  if config.train_every < config.num_envs:
    raise ValueError(
      f"train_every must be >= num_envs ({config.num_envs}): the loop takes "
      f"at most one gradient step per iteration; got {config.train_every}."
    )
  if config.eval_every % config.num_envs:
    raise ValueError(
      f"eval_every must be a multiple of num_envs ({config.num_envs}), got "
      f"{config.eval_every}."
    )
  if (
    config.learning_starts is not None
    and config.learning_starts >= config.total_env_steps
  ):
    raise ValueError(
      f"learning_starts must be less than total_env_steps "
      f"({config.total_env_steps}), or no gradient step is taken; got "
      f"{config.learning_starts}. Leave it None for "
      f"total_env_steps // {LEARNING_STARTS_DIVISOR}."
    )
  if config.total_env_steps % config.eval_every:
    raise ValueError(
      f"total_env_steps must be a multiple of eval_every "
      f"({config.eval_every}), got {config.total_env_steps}."
    )
