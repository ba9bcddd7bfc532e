"""Threads on one host: independent programs side by side.

XLA releases the GIL while it computes, and XLA:CPU runs many small
programs (a vmapped group of RL agents, a small network's training step)
on about one core each, so independent programs in threads keep several
cores busy. This module is the one runner of such work in equivlab: the
DQN seed runner, the DQN experiment's resumable driver and the training
sweeps all go through it.

- `thread_map(fn, items, workers)`: `[fn(item) for item in items]` in
  threads, the results in order.
- `group_bounds(n, groups)`: an axis of length n cut into consecutive
  groups of near-equal size.
- `map_groups(fn, tree, groups)`: `fn` on consecutive groups of a pytree's
  leading axis, in threads, the outputs joined along that axis again.
"""

import concurrent.futures
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks

__all__ = ["default_groups", "group_bounds", "map_groups", "thread_map"]

T = TypeVar("T")
R = TypeVar("R")


def default_groups(num_items: int) -> int:
  """One group per CPU, at most one per item (and at least one)."""
  return max(1, min(num_items, os.cpu_count() or 1))


def group_bounds(num_items: int, groups: int | None = None) -> list[slice]:
  """An axis of length `num_items` cut into `groups` consecutive slices.

  Group sizes differ by at most one, the larger ones last: 5 items in 2
  groups are `[0:2]` and `[2:5]`.

  Args:
    num_items: the length of the axis, >= 1.
    groups: how many groups; None for `default_groups(num_items)`.

  Returns:
    The slices, in order, covering `range(num_items)` once.

  Raises:
    ValueError: for no items, `groups < 1`, or more groups than items.
  """
  if not checks.is_int(num_items) or num_items < 1:
    raise ValueError(f"expected at least one item, got {num_items!r}.")
  count = default_groups(num_items) if groups is None else groups
  if not checks.is_int(count) or count < 1:
    raise ValueError(f"groups must be an int >= 1 or None, got {groups!r}.")
  if count > num_items:
    raise ValueError(
      f"groups ({count}) must not exceed the number of items ({num_items})."
    )
  cuts = [num_items * i // count for i in range(count + 1)]
  return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def thread_map(
  fn: Callable[[T], R], items: Sequence[T], workers: int | None = None
) -> list[R]:
  """`[fn(item) for item in items]`, `workers` items at a time in threads.

  The results keep the order of `items`; the first exception is raised.
  With one worker or one item, `fn` runs in the calling thread.

  Args:
    fn: the work for one item.
    items: the items.
    workers: how many run at once (>= 1); None for one per CPU.

  Returns:
    The results, in the order of `items`.

  Raises:
    ValueError: if `workers` is not an int >= 1 or None.
  """
  if workers is None:
    workers = default_groups(max(len(items), 1))
  checks.check_int("workers", workers, minimum=1)
  if workers == 1 or len(items) <= 1:
    return [fn(item) for item in items]
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return list(pool.map(fn, items))


def _join(parts: Sequence[Any]) -> Any:
  """Pytrees joined along their leading axis (numpy stays numpy)."""

  def concat(*leaves):
    if all(isinstance(leaf, np.ndarray) for leaf in leaves):
      return np.concatenate(leaves)
    return jnp.concatenate(leaves)

  return jax.tree.map(concat, *parts)


def map_groups(
  fn: Callable[[Any], Any], tree: Any, groups: int | None = None
) -> Any:
  """`fn` on consecutive groups of `tree`'s leading axis, in threads.

  `fn(tree[a:b])` runs for each slice of `group_bounds(S, groups)`, each
  group in a thread of its own, and the outputs are joined along their
  leading axis. For a vmapped `fn` (seeds of an RL agent, say) the result
  equals `fn(tree)` computed group by group: each group's result is bit
  for bit `fn` on that group.

  Args:
    fn: maps a pytree with leading axis `[s, ...]` to one with leading
      axis `[s, ...]`.
    tree: a pytree whose leaves share the leading axis `S`.
    groups: how many groups; None for one per CPU (at most one per item).

  Returns:
    The joined outputs, leading axis `[S, ...]`.

  Raises:
    ValueError: if the leaves have no common leading axis, or `groups` is
      out of range.
  """
  leaves = jax.tree.leaves(tree)
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      "map_groups needs leaves that share a leading axis, got shapes "
      f"{[np.shape(leaf) for leaf in leaves]}."
    )
  (size,) = sizes
  parts = [
    jax.tree.map(lambda leaf, s=part: leaf[s], tree)
    for part in group_bounds(size, groups)
  ]
  outs = thread_map(
    lambda part: jax.block_until_ready(fn(part)), parts, len(parts)
  )
  return outs[0] if len(outs) == 1 else _join(outs)
