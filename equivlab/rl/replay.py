"""A uniform experience-replay buffer as pure functions over a pytree.

`init` allocates a fixed-size ring (every leaf `[capacity, ...]`), `add`
writes a batch of items at the head, `can_sample` says whether a batch can be
drawn and `sample` draws one uniformly (with replacement) among the items
held. Every function is pure, so the buffer lives inside `jax.jit`,
`lax.scan` and `jax.vmap` (one buffer per seed). Lin (1992); Mnih et al.
(2015); the `(init, add, sample)` split follows dqn_zoo's `replay.py`.

Sampling from a buffer that holds fewer items than a batch is never allowed
to return padding: it raises `ValueError` when the size is known (outside
jit), and raises at run time from inside jit (a host check), unless the
caller proves it impossible and passes `check=False` (as `dqn.py` does by
sampling only under `can_sample`).
"""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from equivlab.rl import keys as keys_lib
from equivlab.rl import noise


class ReplayState(NamedTuple):
  """The buffer: storage, where to write next, and how many items it holds.

  Attributes:
    storage: a pytree whose leaves are `[capacity, ...]`.
    position: the next row to write, int32 `[]`.
    size: the number of items held, `min(items added, capacity)`, int32 `[]`.
  """

  storage: Any
  position: jax.Array
  size: jax.Array

  @property
  def capacity(self) -> int:
    return jax.tree.leaves(self.storage)[0].shape[0]


def init(capacity: int, example_item: Any) -> ReplayState:
  """An empty buffer for items shaped like `example_item`.

  Args:
    capacity: the maximum number of items held, a positive Python int.
    example_item: one item (a pytree of arrays without a batch axis); only
      its shapes and dtypes are used.

  Returns:
    An empty `ReplayState`.

  Raises:
    ValueError: if `capacity` is not a positive integer.
  """
  if not isinstance(capacity, int | np.integer) or capacity < 1:
    raise ValueError(
      f"replay capacity must be a positive integer, got {capacity!r}."
    )
  storage = jax.tree.map(
    lambda x: jnp.zeros((int(capacity),) + jnp.shape(x), jnp.asarray(x).dtype),
    example_item,
  )
  return ReplayState(
    storage=storage,
    position=jnp.zeros((), jnp.int32),
    size=jnp.zeros((), jnp.int32),
  )


def add(
  state: ReplayState, items: Any, *, contiguous: bool = False
) -> ReplayState:
  """Writes a batch of items at the head of the ring, oldest overwritten.

  Args:
    state: the buffer.
    items: a pytree like the example item with a leading batch axis `[B,
      ...]` on every leaf (B <= capacity).
    contiguous: write the batch as one block at `position`
      (`lax.dynamic_update_slice`, cheaper than the scatter) instead of row
      by row. The rows written are the same as long as the block does not
      wrap around the end of the ring, which holds when every add has the
      same B and B divides the capacity (the position then stays a
      multiple of B): pass it only then.

  Returns:
    The updated buffer.

  Raises:
    ValueError: if the items do not match the storage's structure or shapes,
      B exceeds the capacity, or `contiguous` is asked for a B that does not
      divide the capacity.
  """
  capacity = state.capacity
  if jax.tree.structure(items) != jax.tree.structure(state.storage):
    raise ValueError(
      "replay.add expects items with the structure "
      f"{jax.tree.structure(state.storage)}, got {jax.tree.structure(items)}."
    )
  leaves = jax.tree.leaves(items)
  batch = jnp.shape(leaves[0])[0] if jnp.ndim(leaves[0]) else None
  for item, stored in zip(leaves, jax.tree.leaves(state.storage), strict=True):
    if (
      jnp.shape(item)[:1] != (batch,) or jnp.shape(item)[1:] != stored.shape[1:]
    ):
      raise ValueError(
        "replay.add expects every leaf shaped [B, *item_shape] with one B; "
        f"got {jnp.shape(item)} for storage {stored.shape}."
      )
  if batch > capacity:
    raise ValueError(
      f"replay.add got a batch of {batch} items for capacity {capacity}."
    )
  if contiguous:
    if capacity % batch:
      raise ValueError(
        f"replay.add(contiguous=True) needs a batch size dividing the "
        f"capacity {capacity}, got a batch of {batch}."
      )
    storage = jax.tree.map(
      lambda s, x: jax.lax.dynamic_update_slice_in_dim(
        s, x.astype(s.dtype), state.position, axis=0
      ),
      state.storage,
      items,
    )
  else:
    rows = (state.position + jnp.arange(batch)) % capacity
    storage = jax.tree.map(
      lambda s, x: s.at[rows].set(x.astype(s.dtype)), state.storage, items
    )
  return ReplayState(
    storage=storage,
    position=(state.position + batch) % capacity,
    size=jnp.minimum(state.size + batch, capacity),
  )


def can_sample(state: ReplayState, batch_size: int) -> jax.Array:
  """Whether the buffer holds at least `batch_size` items, bool `[]`."""
  return state.size >= batch_size


def _raise_if_short(size, batch_size):
  if int(np.min(np.asarray(size))) < batch_size:
    raise ValueError(
      f"replay.sample asked for a batch of {batch_size} but the buffer "
      f"holds {np.asarray(size).tolist()} items; check can_sample first."
    )


def _check_batch(state: ReplayState, batch_size: int, check: bool) -> None:
  """A batch fits the capacity; with `check`, the buffer holds one."""
  if batch_size > state.capacity:
    raise ValueError(
      f"replay.sample asked for a batch of {batch_size} from a buffer of "
      f"capacity {state.capacity}: the buffer must be at least a batch."
    )
  if check:
    if isinstance(state.size, jax.core.Tracer):
      jax.debug.callback(_raise_if_short, state.size, batch_size)
    else:
      _raise_if_short(state.size, batch_size)


def sample(
  key: chex.PRNGKey, state: ReplayState, batch_size: int, *, check=True
) -> Any:
  """Draws `batch_size` items uniformly, with replacement, from those held.

  Args:
    key: a PRNG key.
    state: the buffer.
    batch_size: the number of items, a positive Python int <= capacity.
    check: verify at run time that the buffer holds a batch. Only pass False
      where the call is guarded by `can_sample` (inside `lax.cond`).

  Returns:
    A pytree of items with a leading axis `[batch_size, ...]`.

  Raises:
    ValueError: if `key` is not one PRNG key, `batch_size` exceeds the
      capacity, or the buffer holds fewer than `batch_size` items (at once
      when the size is concrete; from the jitted computation otherwise).
  """
  keys_lib.check_key(key)
  if not isinstance(batch_size, int | np.integer) or batch_size < 1:
    raise ValueError(
      "replay.sample expects a positive integer batch_size, got "
      f"{batch_size!r}."
    )
  _check_batch(state, int(batch_size), check)
  # Never index rows that were not written: draw from [0, size).
  rows = jax.random.randint(key, (batch_size,), 0, jnp.maximum(state.size, 1))
  return jax.tree.map(lambda s: s[rows], state.storage)


def sample_with_bits(
  bits: jax.Array, state: ReplayState, *, check: bool = True
) -> Any:
  """`sample` with its random words drawn by the caller (`rl.noise`).

  Rows are `noise.randint_from_bits(bits[0], bits[1], size)`: for `bits`
  stacked from `jax.random.bits(k, (batch_size,))` of `k1, k2 =
  jax.random.split(key)`, the very rows `sample(key, ...)` takes.

  Args:
    bits: uint32 words, `[2, batch_size]`.
    state: the buffer.
    check: as in `sample`.

  Returns:
    A pytree of items with a leading axis `[batch_size, ...]`.

  Raises:
    TypeError: for bits that are not uint32.
    ValueError: as `sample`, or for bits not shaped `[2, batch_size]`.
  """
  if getattr(bits, "dtype", None) != jnp.uint32:
    raise TypeError(
      "replay.sample_with_bits expects uint32 bits (jax.random.bits), got "
      f"dtype {getattr(bits, 'dtype', type(bits).__name__)}."
    )
  if jnp.ndim(bits) != 2 or jnp.shape(bits)[0] != 2:
    raise ValueError(
      "replay.sample_with_bits expects uint32 bits shaped [2, batch_size], "
      f"got shape {jnp.shape(bits)}."
    )
  _check_batch(state, int(jnp.shape(bits)[1]), check)
  span = jnp.maximum(state.size, 1)  # rows of an empty buffer: row 0
  rows = noise.randint_from_bits(bits[0], bits[1], span)
  return jax.tree.map(lambda s: s[rows], state.storage)
