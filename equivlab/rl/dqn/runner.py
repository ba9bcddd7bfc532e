"""DQN over many seeds: one vmapped group of seeds per core, in threads.

`seed_runner(config)` and `train_seeds(config, keys)` give what
`jax.vmap(make_train(config))(keys)` gives. The seeds are cut into
consecutive groups and each group's program runs in a thread of its own
(`equivlab.parallel.map_groups`): XLA:CPU runs the learn step's batched
matrix products on one thread, so one program over all seeds keeps about
one core busy, and groups side by side keep several busy.
"""

from collections.abc import Callable
from typing import Any

import jax

from equivlab import checks, parallel
from equivlab.rl import keys as keys_lib
from equivlab.rl.dqn.config import DQNConfig
from equivlab.rl.dqn.loop import make_train

__all__ = ["seed_runner", "train_seeds"]


def seed_runner(
  config: DQNConfig, *, groups: int | None = None
) -> Callable[[Any], dict]:
  """`run(keys)`: `jax.vmap(make_train(config))(keys)`, in vmapped groups.

  The runner splits the seeds into `groups` consecutive groups
  (`parallel.group_bounds`), runs `jax.jit(jax.vmap(train))` on each in a
  thread of its own and concatenates the results along the seed axis. Each
  group's result is bit for bit that of `jax.vmap` over the group; against
  one program over every seed, the float rounding may differ with the
  group size.

  Args:
    config: the settings (validated here).
    groups: how many groups run at once; None for as many as there are
      CPUs (at most one per seed).

  Returns:
    `run(keys) -> {"state": ..., "metrics": ...}`, leaves `[S, ...]` as
    `jax.vmap(make_train(config))` gives them. `keys` may be typed keys
    `[S]`, legacy uint32 keys `[S, 2]` or a list of keys (`rl.keys.as_keys`).
    It compiles once per group size, ahead of the threads.

  Raises:
    TypeError, ValueError: for a bad config or `groups` not an int >= 1
      or None; in `run`, for keys of another shape or kind (a ValueError
      saying what was expected) or more groups than keys.
  """
  checks.check_int("groups", groups, minimum=1, allow_none=True)
  train = jax.jit(jax.vmap(make_train(config)))
  compiled = {}

  def compiled_for(keys: jax.Array):
    if keys.shape not in compiled:
      compiled[keys.shape] = train.lower(keys).compile()
    return compiled[keys.shape]

  def run(keys: Any) -> dict:
    keys = keys_lib.as_keys(keys)
    bounds = parallel.group_bounds(keys.shape[0], groups)
    for part in bounds:
      compiled_for(keys[part])
    return parallel.map_groups(
      lambda part: compiled_for(part)(part), keys, len(bounds)
    )

  return run


def train_seeds(
  config: DQNConfig, keys: Any, *, groups: int | None = None
) -> dict:
  """`seed_runner(config, groups=groups)(keys)`: every seed, trained.

  Args:
    config: the settings.
    keys: typed keys `[S]`, legacy uint32 keys `[S, 2]` or a list of keys.
    groups: seed groups run side by side; None for one per CPU.

  Returns:
    `{"state": ..., "metrics": ...}` with leaves `[S, ...]`.

  Raises:
    TypeError, ValueError: as `seed_runner`.
  """
  return seed_runner(config, groups=groups)(keys)
