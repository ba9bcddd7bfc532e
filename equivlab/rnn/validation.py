"""Argument checks of the rnn package: parameters, shapes, lengths, labels.

Shapes and dtypes are known at trace time and are always checked. Values
(labels, lengths) are checked eagerly when they are concrete; inside the
caller's `jit` or `vmap` they are tracers, and the public functions offer
`checked=True`, which adds `jax.experimental.checkify` checks for a
`checkify.checkify`-wrapped caller to raise at run time.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from equivlab import checks
from equivlab.rnn.cells import ELMAN_KEYS

CELL_KEYS = ELMAN_KEYS[:3]


def check_flag(checked: Any) -> None:
  """Raises TypeError unless `checked` is a Python bool (static under jit)."""
  if not isinstance(checked, bool):
    got = "a traced value" if not checks.is_concrete(checked) else repr(checked)
    raise TypeError(
      "checked must be a Python bool (static under jax.jit: pass "
      f"static_argnames='checked' or use functools.partial), got {got}."
    )


def check_lengths(
  name: str, lengths: Any, num_steps: int, batch_shape: tuple
) -> None:
  """Validates sequence lengths: integer, shaped like the batch, in [0, T]."""
  lengths_shape = jnp.shape(lengths)
  if lengths_shape != batch_shape:
    per = " (one per sequence)" if batch_shape else " (a scalar)"
    raise ValueError(
      f"{name} must have shape {batch_shape}{per}, got {lengths_shape}."
    )
  dtype = jnp.result_type(lengths)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"{name} must be integers, got dtype {dtype}.")
  if not checks.is_concrete(lengths):
    return
  value = np.asarray(lengths)
  if value.size and value.max() > num_steps:
    raise ValueError(
      f"{name} must be <= the number of steps T = {num_steps}, got a "
      f"length of {int(value.max())}."
    )
  if value.size and value.min() < 0:
    raise ValueError(f"{name} must be non-negative, got {int(value.min())}.")


def check_elman_params(
  params: Any, *, readout: bool = True
) -> tuple[int, int, int | None]:
  """Validates the Elman parameter dict and returns its sizes (H, D, K).

  Args:
    params: the parameters to check.
    readout: require exactly `ELMAN_KEYS` (True) or only the cell's
      `W_xh, W_hh, b_h` (False, other keys ignored; K is then None).

  Raises:
    TypeError: if `params` is not a dict.
    ValueError: for missing keys or shapes that disagree.
  """
  keys = ELMAN_KEYS if readout else CELL_KEYS
  if not isinstance(params, dict):
    raise TypeError(
      f"params must be a dict with keys {sorted(keys)}, got "
      f"{type(params).__name__}."
    )
  if (set(params) != set(keys)) if readout else not set(keys) <= set(params):
    raise ValueError(
      f"params must be a dict with keys {sorted(keys)}, got {sorted(params)}."
    )
  shapes = {k: jnp.shape(params[k]) for k in keys}
  if len(shapes["W_hh"]) != 2 or shapes["W_hh"][0] != shapes["W_hh"][1]:
    raise ValueError(f"W_hh must be square (H, H), got {shapes['W_hh']}.")
  hidden = shapes["W_hh"][0]
  if len(shapes["W_xh"]) != 2:
    raise ValueError(f"W_xh must be (H, D), got {shapes['W_xh']}.")
  dim = shapes["W_xh"][1]
  expected = {"W_xh": (hidden, dim), "b_h": (hidden,)}
  classes = None
  if readout:
    if len(shapes["W_hz"]) != 2 or shapes["W_hz"][0] < 1:
      raise ValueError(
        f"W_hz must be (K, H) with K >= 1 classes, got {shapes['W_hz']}."
      )
    classes = shapes["W_hz"][0]
    expected.update({"W_hz": (classes, hidden), "b_z": (classes,)})
  for key, shape in expected.items():
    if shapes[key] != shape:
      raise ValueError(
        f"params[{key!r}] must have shape {shape} for H={hidden}, D={dim}, "
        f"K={classes}; got {shapes[key]}."
      )
  return hidden, dim, classes


def check_inputs(
  xs: Any, h0: Any, hidden: int, dim: int, *, batched: bool = False
) -> int:
  """Validates `xs [T, D]` and `h0 [H]` (batched: [B, T, D], [B, H]).

  Returns:
    T, the number of steps.
  """
  xs_shape, h0_shape = jnp.shape(xs), jnp.shape(h0)
  lead, xs_layout = (xs_shape[:1], "[B, T, D]") if batched else ((), "[T, D]")
  if len(xs_shape) != len(lead) + 2:
    raise ValueError(f"xs must be {xs_layout}, got shape {xs_shape}.")
  num_steps = xs_shape[len(lead)]
  if num_steps == 0:
    raise ValueError(f"xs must hold at least one step, got T = 0 ({xs_shape}).")
  if xs_shape[-1] != dim:
    raise ValueError(
      f"xs must be {xs_layout} with D = {dim} (from W_xh), got {xs_shape}."
    )
  if h0_shape != (*lead, hidden):
    raise ValueError(f"h0 must have shape {(*lead, hidden)}, got {h0_shape}.")
  return num_steps


def check_target_shape(ys: Any, shape: tuple, layout: str) -> None:
  """Validates that `ys` has `shape` and an integer dtype."""
  if jnp.shape(ys) != shape:
    raise ValueError(
      f"ys must be {layout} = {shape} to match xs, got {jnp.shape(ys)}."
    )
  dtype = jnp.result_type(ys)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"ys must hold integer class labels, got dtype {dtype}.")


def check_label_values(
  ys: Any, num_classes: int, lengths: Any = None, *, name: str = "ys"
) -> None:
  """Raises ValueError for a label outside [0, K) at a valid step.

  Labels at steps t >= length are padding and are not checked. Runs only
  when the labels (and lengths) are concrete; tracers pass.
  """
  if not checks.is_concrete((ys, lengths)):
    return
  ys = np.asarray(ys)
  if lengths is not None:
    valid = np.arange(ys.shape[-1]) < np.asarray(lengths)[..., None]
    ys = np.where(valid, ys, np.zeros((), ys.dtype))
  checks.check_labels(name, ys, num_classes)


def _first_bad(bad: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The flat index of the first True in `bad`, and its index by axis."""
  first = jnp.argmax(bad.reshape(-1))
  index = jnp.unravel_index(first, bad.shape)
  return first, {f"i{axis}": i for axis, i in enumerate(index)}


def _index_format(rank: int) -> str:
  inner = ", ".join("{i" + str(axis) + "}" for axis in range(rank))
  return inner if rank == 1 else f"({inner})"


def check_at_run_time(
  ys: Any,
  num_classes: int,
  lengths: Any,
  num_steps: int,
  *,
  lengths_name: str = "lengths",
) -> None:
  """`checkify` checks of traced labels (at valid steps) and lengths.

  Only for values that are not concrete (those were checked eagerly). The
  caller's function must be wrapped in `checkify.checkify`; `err.throw()`
  then raises a `JaxRuntimeError` (a ValueError) with the message.
  """
  if checks.is_concrete((ys, lengths)):
    return
  ys = jnp.asarray(ys)
  valid = True
  if lengths is not None:
    lengths = jnp.asarray(lengths)
    bad_len = (lengths < 0) | (lengths > num_steps)
    first, index = _first_bad(jnp.atleast_1d(bad_len))
    where = f" at index {_index_format(1)}" if lengths.ndim else ""
    checkify.check(
      ~jnp.any(bad_len),
      f"{lengths_name} must lie in [0, T = {num_steps}], got {{value}}"
      f"{where} (checked at run time).",
      value=jnp.atleast_1d(lengths)[first],
      **(index if lengths.ndim else {}),
    )
    steps = jnp.arange(ys.shape[-1]).reshape((1,) * lengths.ndim + (-1,))
    valid = steps < lengths[..., None]
  bad = ((ys < 0) | (ys >= num_classes)) & valid
  first, index = _first_bad(bad)
  checkify.check(
    ~jnp.any(bad),
    f"ys must lie in [0, {num_classes}), got {{label}} at index "
    f"{_index_format(ys.ndim)} (checked at run time).",
    label=ys.reshape(-1)[first],
    **index,
  )
