"""PRNG keys as jax users pass them, checked and made uniform.

jax accepts two kinds of key: typed keys (`jax.random.key(0)`, dtype
`key<impl>`, shape `[]` for one key) and legacy raw keys
(`jax.random.PRNGKey(0)`, uint32 `[2]` for threefry). The public entry
points of `equivlab.rl` take either, and a batch of keys also as a Python
list or tuple of keys, as `jax.vmap` does. Anything else is refused with a
`ValueError` that says what was expected.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_key", "as_keys", "check_key"]


def _data_width() -> int:
  """The uint32 words of one key of the default implementation."""
  return int(jax.random.key_data(jax.random.key(0)).shape[-1])


def _is_typed(value: Any) -> bool:
  dtype = getattr(value, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _describe(value: Any) -> str:
  if isinstance(value, list | tuple):
    return f"a {type(value).__name__} of {len(value)} item(s)"
  shape = getattr(value, "shape", None)
  if shape is None:
    return repr(value)
  return f"shape {tuple(shape)}, dtype {value.dtype}"


def _is_raw(value: Any, batch_rank: int) -> bool:
  """A uint32 array of `batch_rank` batch axes and one key-data axis."""
  return (
    hasattr(value, "dtype")
    and value.dtype == np.uint32
    and np.ndim(value) == batch_rank + 1
    and np.shape(value)[-1] == _data_width()
  )


def check_key(key: Any, name: str = "key", *, hint: str = "") -> None:
  """Raises unless `key` is one PRNG key, typed `[]` or legacy uint32 `[2]`.

  Tracers (inside `jit` or `vmap`) are checked by their shape and dtype,
  which are known at trace time.

  Args:
    key: the value to check.
    name: the argument's name, for the message.
    hint: a sentence appended to the message (what to do with a batch).

  Raises:
    ValueError: for a list, a batch of keys, or any other array.
  """
  if _is_typed(key) and np.ndim(key) == 0:
    return
  if _is_raw(key, 0):
    return
  raise ValueError(
    f"{name} must be one PRNG key: jax.random.key(seed) (a typed key, "
    f"shape []) or jax.random.PRNGKey(seed) (uint32 [{_data_width()}]); "
    f"got {_describe(key)}.{' ' + hint if hint else ''}"
  )


def as_key(key: Any, name: str = "key") -> jax.Array:
  """One PRNG key as a typed key `[]` (legacy keys are wrapped).

  Raises:
    ValueError: as `check_key`.
  """
  check_key(key, name)
  return key if _is_typed(key) else jax.random.wrap_key_data(key)


def as_keys(keys: Any, name: str = "keys") -> jax.Array:
  """A batch of PRNG keys as a typed key array `[S]`, `S >= 1`.

  Accepts what `jax.vmap` over a key accepts: a typed key array `[S]`
  (`jax.random.split(jax.random.key(0), S)`), legacy uint32 keys `[S, 2]`
  (`jax.random.split(jax.random.PRNGKey(0), S)`), and a list or tuple of
  single keys of either kind. A typed key holds the same bits as the
  legacy key it wraps, so both give the same random streams.

  Args:
    keys: the keys.
    name: the argument's name, for the message.

  Returns:
    Typed keys `[S]`.

  Raises:
    ValueError: for no keys, a single key, keys of another rank, or items
      of a list that are not keys.
  """
  expected = (
    f"{name} must be a typed key array [S] (jax.random.split("
    f"jax.random.key(0), S)), legacy uint32 keys [S, {_data_width()}] "
    "(jax.random.split(jax.random.PRNGKey(0), S)) or a list of keys, S >= 1"
  )
  if isinstance(keys, list | tuple):
    if not keys:
      raise ValueError(f"{expected}; got an empty {type(keys).__name__}.")
    items = []
    for i, key in enumerate(keys):
      try:
        items.append(as_key(key, f"{name}[{i}]"))
      except ValueError as error:
        raise ValueError(f"{expected}; {error}") from None
    return jnp.stack(items)
  if _is_typed(keys) and np.ndim(keys) == 1:
    typed = keys
  elif _is_raw(keys, 1):
    typed = jax.random.wrap_key_data(keys)
  else:
    raise ValueError(f"{expected}; got {_describe(keys)}.")
  if typed.shape[0] < 1:
    raise ValueError(f"{expected}; got no keys ({_describe(keys)}).")
  return typed
