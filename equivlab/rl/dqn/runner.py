"""DQN over many seeds: one vmapped group of seeds per core, in threads.

`seed_runner(config)` and `train_seeds(config, keys)` give what
`jax.vmap(make_train(config))(keys)` gives, faster on CPUs (see
`seed_runner`). Re-exported by `equivlab.rl.dqn`.
"""

import concurrent.futures
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp

from equivlab.rl.dqn.config import DQNConfig
from equivlab.rl.dqn.loop import make_train


def default_groups(num_seeds: int) -> int:
  """The groups `seed_runner` makes by default: one per CPU, one per seed."""
  return max(1, min(num_seeds, os.cpu_count() or 1))


def group_bounds(num_seeds: int, groups: int | None = None) -> list[slice]:
  """The seed axis cut into `groups` consecutive groups, as slices.

  Group sizes differ by at most one, the larger ones last: 5 seeds in 2
  groups are `[0:2]` and `[2:5]`.

  Args:
    num_seeds: the length of the seed axis, >= 1.
    groups: how many groups; None for `default_groups(num_seeds)`.

  Raises:
    ValueError: for no seeds, `groups < 1`, or more groups than seeds.
  """
  if num_seeds < 1:
    raise ValueError(f"expected at least one seed, got {num_seeds}.")
  count = default_groups(num_seeds) if groups is None else groups
  if count < 1:
    raise ValueError(f"groups must be >= 1 or None, got {groups}.")
  if count > num_seeds:
    raise ValueError(
      f"groups ({count}) must not exceed the number of seeds ({num_seeds})."
    )
  cuts = [num_seeds * i // count for i in range(count + 1)]
  return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def seed_runner(
  config: DQNConfig, *, groups: int | None = None
) -> Callable[[jax.Array], dict]:
  """`run(keys)`: `jax.vmap(make_train(config))(keys)`, in vmapped groups.

  XLA:CPU runs each of the learn step's batched matrix products on one
  thread, so one program over all seeds keeps about one core busy. The
  runner splits the seeds into `groups` consecutive groups, runs
  `jax.jit(jax.vmap(train))` on each in a thread of its own and
  concatenates the results along the seed axis: on 2 cores, 4 and 16
  seeds ran 1.85-2.1x faster than one program (`benchmarks/dqn.py`,
  part (d)). Each group's result is bit for bit that of `jax.vmap` over
  the group; against one program over every seed, the float rounding may
  differ with the group size.

  Args:
    config: the settings (validated here).
    groups: how many groups run at once; None for as many as there are
      CPUs (at most one per seed).

  Returns:
    `run(keys) -> {"state": ..., "metrics": ...}` for a key array `[S]`,
    leaves `[S, ...]` as `jax.vmap(make_train(config))` gives them. It
    compiles once per group size and key type, ahead of the threads.

  Raises:
    ValueError: for `groups < 1`, and in `run` for no keys or more groups
      than keys.
  """
  if groups is not None and groups < 1:
    raise ValueError(f"groups must be >= 1 or None, got {groups}.")

  train = jax.jit(jax.vmap(make_train(config)))
  compiled = {}

  def compiled_for(keys):
    signature = (keys.shape, keys.dtype)
    if signature not in compiled:
      compiled[signature] = train.lower(keys).compile()
    return compiled[signature]

  def run(keys: jax.Array) -> dict:
    if keys.ndim != 1 or keys.shape[0] < 1:
      raise ValueError(f"expected a key array [S], S >= 1; got {keys.shape}.")
    chunks = [keys[part] for part in group_bounds(keys.shape[0], groups)]
    programs = [compiled_for(chunk) for chunk in chunks]
    count = len(chunks)
    if count == 1:
      return programs[0](keys)
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
      outs = list(
        pool.map(
          lambda job: jax.block_until_ready(job[0](job[1])),
          zip(programs, chunks, strict=True),
        )
      )
    return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)

  return run


def train_seeds(
  config: DQNConfig, keys: jax.Array, *, groups: int | None = None
) -> dict:
  """`seed_runner(config, groups=groups)(keys)`: every seed, trained."""
  return seed_runner(config, groups=groups)(keys)
