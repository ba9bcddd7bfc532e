"""Argument checks shared by the library's public entry points.

Every public function of equivlab checks its arguments eagerly, before any
array reaches XLA or flax, and raises a `ValueError` (or `TypeError` for a
value of the wrong kind) whose message names the argument, what was expected
and what was received. These helpers write those messages one way.

Values that are jax tracers (inside `jit`, `vmap` or `grad`) cannot be
checked by value; `is_concrete` tells the callers which checks they can run.
"""

import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_int(value: Any) -> bool:
  """True for Python and NumPy integers, False for bools and everything else."""
  return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_concrete(value: Any) -> bool:
  """True unless `value` (or a leaf of it) is a jax tracer."""
  leaves = jax.tree_util.tree_leaves(value)
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def check_int(
  name: str,
  value: Any,
  *,
  minimum: int | None = None,
  maximum: int | None = None,
  allow_none: bool = False,
) -> None:
  """Raises unless `value` is an int in `[minimum, maximum]`.

  Args:
    name: the argument's name, for the message.
    value: what was received.
    minimum: the smallest accepted value (None: no bound).
    maximum: the largest accepted value (None: no bound).
    allow_none: accept None as well.

  Raises:
    TypeError: if `value` is not an int (bools are not ints here).
    ValueError: if it is outside the bounds.
  """
  if value is None and allow_none:
    return
  expected = _int_range(minimum, maximum) + (" or None" if allow_none else "")
  if not is_int(value):
    raise TypeError(f"{name} must be {expected}, got {value!r}.")
  if (minimum is not None and value < minimum) or (
    maximum is not None and value > maximum
  ):
    raise ValueError(f"{name} must be {expected}, got {value!r}.")


def _int_range(minimum: int | None, maximum: int | None) -> str:
  if minimum is not None and maximum is not None:
    return f"an int in [{minimum}, {maximum}]"
  if minimum is not None:
    return f"an int >= {minimum}"
  if maximum is not None:
    return f"an int <= {maximum}"
  return "an int"


def check_ints(
  name: str, values: Any, *, minimum: int | None = None, nonempty: bool = True
) -> None:
  """Raises unless `values` is a non-string sequence of ints >= `minimum`.

  Raises:
    TypeError: if it is not a sequence of ints.
    ValueError: if it is empty (with `nonempty`) or an entry is too small.
  """
  if isinstance(values, str) or not isinstance(values, Sequence):
    raise TypeError(f"{name} must be a sequence of ints, got {values!r}.")
  if nonempty and not values:
    raise ValueError(f"{name} must hold at least one int, got {values!r}.")
  for i, value in enumerate(values):
    check_int(f"{name}[{i}]", value, minimum=minimum)


def check_number(
  name: str,
  value: Any,
  *,
  minimum: float | None = None,
  maximum: float | None = None,
  strict_minimum: bool = False,
  strict_maximum: bool = False,
  allow_none: bool = False,
) -> None:
  """Raises unless `value` is a finite real number within the bounds.

  Args:
    name: the argument's name.
    value: what was received.
    minimum: the lower bound (None: none).
    maximum: the upper bound (None: none).
    strict_minimum: exclude `minimum` itself (`value > minimum`).
    strict_maximum: exclude `maximum` itself (`value < maximum`).
    allow_none: accept None as well.

  Raises:
    TypeError: if `value` is not a real number.
    ValueError: if it is NaN, infinite or out of bounds.
  """
  if value is None and allow_none:
    return
  lo = "" if minimum is None else ("> " if strict_minimum else ">= ")
  hi = "" if maximum is None else ("< " if strict_maximum else "<= ")
  parts = [f"{lo}{minimum}" if lo else "", f"{hi}{maximum}" if hi else ""]
  expected = "a finite number" + (
    " " + " and ".join(p for p in parts if p) if any(parts) else ""
  )
  if allow_none:
    expected += " or None"
  if isinstance(value, bool) or not isinstance(value, int | float | np.number):
    raise TypeError(f"{name} must be {expected}, got {value!r}.")
  value = float(value)
  bad = not math.isfinite(value)
  if minimum is not None:
    bad |= value <= minimum if strict_minimum else value < minimum
  if maximum is not None:
    bad |= value >= maximum if strict_maximum else value > maximum
  if bad:
    raise ValueError(f"{name} must be {expected}, got {value!r}.")


def check_choice(name: str, value: Any, options: Iterable[Any]) -> None:
  """Raises ValueError unless `value` is one of `options`."""
  options = tuple(options)
  try:
    ok = value in options
  except TypeError:  # An unhashable value compared with a dict's keys.
    ok = False
  if not ok:
    raise ValueError(f"{name} must be one of {options}, got {value!r}.")


def check_rank(name: str, x: Any, ranks: int | Sequence[int], layout: str):
  """Raises ValueError unless `x` has one of `ranks` dimensions.

  Args:
    name: the argument's name.
    x: an array (anything with `.shape`, or array-like).
    ranks: the accepted rank or ranks.
    layout: the expected layout for the message, e.g. "[N, H, W, C]".
  """
  ranks = (ranks,) if is_int(ranks) else tuple(ranks)
  shape = np.shape(x)
  if len(shape) not in ranks:
    raise ValueError(f"{name} must be {layout}, got shape {shape}.")


def check_labels(name: str, labels: Any, num_classes: int) -> None:
  """Raises unless concrete integer `labels` all lie in `[0, num_classes)`.

  Tracers pass unchecked (their values are unknown until run time); callers
  document that contract and offer a checked path.

  Raises:
    TypeError: if the labels are not integers.
    ValueError: naming the first label out of range and its index.
  """
  if not is_concrete(labels):
    return
  array = np.asarray(labels)
  if not np.issubdtype(array.dtype, np.integer):
    raise TypeError(
      f"{name} must be integer class labels in [0, {num_classes}), got "
      f"dtype {array.dtype}."
    )
  bad = (array < 0) | (array >= num_classes)
  if bad.any():
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    where = index[0] if len(index) == 1 else index
    raise ValueError(
      f"{name} must lie in [0, {num_classes}), got {int(array[index])} at "
      f"index {where} ({int(bad.sum())} of {array.size} out of range)."
    )


def check_floating(name: str, x: Any) -> None:
  """Raises TypeError unless `x` has a floating-point dtype."""
  dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f"{name} must have a floating-point dtype (float32, bfloat16, "
      f"float64, ...), got {dtype}."
    )


# Short names people write for float dtypes, besides numpy's own names.
_DTYPE_ALIASES = {
  "bf16": "bfloat16",
  "f16": "float16",
  "fp16": "float16",
  "half": "float16",
  "f32": "float32",
  "fp32": "float32",
  "float": "float32",
  "single": "float32",
  "f64": "float64",
  "fp64": "float64",
  "double": "float64",
}


def float_dtype(name: str, dtype: Any, *, allow_none: bool = False):
  """The float dtype that `dtype` names, or a clear error.

  Accepts a numpy/jax dtype, a scalar type (`jnp.float32`, `np.float16`,
  Python's `float`), a name ("float32", "bfloat16") or a short alias
  ("f32", "fp32", "bf16", "f16", "fp16", "half", "single", "double", "f64").
  Without `jax_enable_x64`, float64 stays float64 here: jax itself narrows
  arrays to float32 when it creates them.

  Args:
    name: the argument's name, for the message.
    dtype: what was received.
    allow_none: return None for None.

  Returns:
    A `numpy.dtype` of a floating kind (float16, bfloat16, float32, ...).

  Raises:
    TypeError: if `dtype` names no dtype, or a dtype that is not a float
      (int32, bool, complex64, ...).
  """
  if dtype is None and allow_none:
    return None
  key = dtype.strip().lower() if isinstance(dtype, str) else None
  if key is not None:
    dtype = _DTYPE_ALIASES.get(key, key)
  try:
    resolved = jnp.dtype(dtype) if dtype is not None else None
  except (TypeError, ValueError):
    resolved = None
  if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
    got = f"the {resolved} dtype" if resolved is not None else repr(dtype)
    raise TypeError(
      f"{name} must be a float dtype (jnp.float32, 'float32', 'bfloat16', "
      f"'bf16', 'float16', ...), got {got}."
    )
  return resolved


def concrete_int(name: str, value: Any) -> int | None:
  """`value` as a Python int, or None when it is a jax tracer.

  Accepts Python and NumPy integers and 0-d integer arrays (numpy or jax),
  so the same public function can check a concrete index eagerly and let a
  traced one through (its value is unknown until run time).

  Raises:
    TypeError: for anything else (floats, bools, arrays of rank > 0).
  """
  if not is_concrete(value):
    return None
  if is_int(value):
    return int(value)
  if isinstance(value, np.ndarray | jax.Array) and value.ndim == 0:
    if jnp.issubdtype(value.dtype, jnp.integer):
      return int(value)
  raise TypeError(f"{name} must be an integer scalar, got {value!r}.")


def check_index(name: str, value: Any, size: int, what: str = "") -> None:
  """Raises unless a concrete `value` is an integer in `[0, size)`.

  Tracers pass unchecked (see `concrete_int`).

  Args:
    name: the argument's name.
    value: what was received.
    size: the number of valid indices.
    what: what the index counts, for the message (e.g. "classes").

  Raises:
    TypeError: if it is not an integer scalar.
    ValueError: if it lies outside `[0, size)`.
  """
  index = concrete_int(name, value)
  if index is not None and not 0 <= index < size:
    of = f" ({size} {what})" if what else ""
    raise ValueError(f"{name} must be in [0, {size - 1}]{of}, got {index}.")
