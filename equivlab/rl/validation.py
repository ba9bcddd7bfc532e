"""Argument checks of the RL functions: indices, probabilities, step sizes.

Each check looks at concrete values only. Inside `jit`, `vmap` or `grad`
the values are tracers, unknown until run time, and pass unchecked: there
an out-of-range index is clamped by XLA's gather and a bad step size gives
a wrong result, so check the inputs before tracing (every public function
of `equivlab.rl` does so when called eagerly). Shapes and dtypes are known
at trace time and are always checked.
"""

from typing import Any

import numpy as np

from equivlab import checks

__all__ = ["check_index", "check_probability", "check_step_size"]


def _values(value: Any) -> np.ndarray | None:
  """`value` as a NumPy array, or None for a tracer."""
  return np.asarray(value) if checks.is_concrete(value) else None


def check_index(name: str, value: Any, size: int, what: str) -> None:
  """Raises unless concrete `value` holds integer indices in `[0, size)`.

  Args:
    name: the argument's name.
    value: a scalar or array of indices.
    size: how many `what` there are.
    what: "states", "actions", ... for the message.

  Raises:
    TypeError: if `value` is not of an integer dtype (a bool, a float).
    ValueError: if an index lies outside `[0, size)`.
  """
  array = _values(value)
  if array is None:
    dtype = getattr(value, "dtype", None)
    if dtype is not None and not np.issubdtype(dtype, np.integer):
      raise TypeError(
        f"{name} must be an integer index of one of {size} {what}, got "
        f"dtype {dtype}."
      )
    return
  if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
    raise TypeError(
      f"{name} must be an integer index of one of {size} {what} in [0, "
      f"{size}), got {value!r} (dtype {array.dtype})."
    )
  bad = (array < 0) | (array >= size)
  if bad.any():
    first = array.reshape(-1)[np.argmax(bad.reshape(-1))]
    raise ValueError(
      f"{name} must index one of the {size} {what}, in [0, {size}); got "
      f"{int(first)}."
    )


def check_probability(
  name: str, value: Any, *, include_one: bool = True
) -> None:
  """Raises unless concrete `value` lies in `[0, 1]` (or `[0, 1)`).

  Raises:
    ValueError: for NaN or a value outside the interval.
  """
  array = _values(value)
  if array is None:
    return
  hi = "]" if include_one else ")"
  values = array.astype(np.float64)
  upper = values <= 1 if include_one else values < 1
  if not np.all((values >= 0) & upper):
    raise ValueError(f"{name} must lie in [0, 1{hi}, got {value!r}.")


def check_step_size(
  name: str, value: Any, *, maximum: float | None = None
) -> None:
  """Raises unless a concrete step size is finite, > 0 (and <= maximum).

  Raises:
    ValueError: for NaN, infinity, a value <= 0 or above `maximum`.
  """
  array = _values(value)
  if array is None:
    return
  values = array.astype(np.float64)
  ok = np.isfinite(values) & (values > 0)
  if maximum is not None:
    ok &= values <= maximum
  if not np.all(ok):
    bound = "" if maximum is None else f" and <= {maximum}"
    raise ValueError(
      f"{name} must be a finite step size > 0{bound}, got {value!r}."
    )
