"""The scanned unroll: any cell over a sequence with one `jax.lax.scan`.

One sequence `[T, D]` or a batch (`[T, B, D]` time-major, `[B, T, D]`
batch-major, vmapped over B), with optional per-sequence lengths (padded
steps hold the carry and emit zeros) and reverse time. `elman_unroll` is
the Elman special case with the input product hoisted out of the scan.
"""

from typing import Any

import jax
import jax.numpy as jnp

from equivlab import checks
from equivlab.rnn import validation
from equivlab.rnn.cells import CellFn, Params, PyTree


def sequence_mask(
  lengths: jax.Array, num_steps: int, *, time_major: bool = True
) -> jax.Array:
  """Boolean validity mask, True where step t < length.

  Args:
    lengths: [B] (or a scalar) integer lengths.
    num_steps: T.
    time_major: whether the mask is [T, B] (True) or [B, T].

  Returns:
    `[T, B]` or `[B, T]` booleans (`[T]` for a scalar length).

  Raises:
    TypeError: if `num_steps` is not an int.
    ValueError: if it is negative, or `lengths` are not integers.
  """
  checks.check_int("num_steps", num_steps, minimum=0)
  lengths = jnp.asarray(lengths)
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}.")
  steps = jnp.arange(num_steps)
  if lengths.ndim == 0:
    return steps < lengths
  mask = steps[None, :] < lengths[:, None]
  return mask.T if time_major else mask


def _select(valid: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  return jax.tree.map(lambda a, b: jnp.where(valid, a, b), new, old)


def _unroll_one(cell_fn, params, xs, carry0, length, reverse, unroll):
  """Unrolls one sequence `xs [T, D]`; steps t >= length keep the carry."""
  if length is None:
    return jax.lax.scan(
      lambda carry, x: cell_fn(params, carry, x),
      carry0,
      xs,
      reverse=reverse,
      unroll=unroll,
    )

  def step(carry, inputs):
    t, x = inputs
    new_carry, out = cell_fn(params, carry, x)
    valid = t < length
    return _select(valid, new_carry, carry), jnp.where(
      valid, out, jnp.zeros_like(out)
    )

  return jax.lax.scan(
    step,
    carry0,
    (jnp.arange(xs.shape[0]), xs),
    reverse=reverse,
    unroll=unroll,
  )


def _check_unroll(
  cell_fn: Any, xs: Any, carry0: Any, lengths: Any, time_major, unroll
) -> tuple[int, tuple]:
  """Validates `unroll`'s arguments; returns T and the batch shape."""
  if not callable(cell_fn):
    raise TypeError(
      "cell_fn must be a callable (params, carry, x) -> (carry, output), "
      f"got {type(cell_fn).__name__}."
    )
  if not isinstance(unroll, bool):
    checks.check_int("unroll", unroll, minimum=1)
  xs_shape = jnp.shape(xs)
  if len(xs_shape) not in (2, 3):
    raise ValueError(
      f"xs must be [T, D], [T, B, D] or [B, T, D], got shape {xs_shape}."
    )
  if len(xs_shape) == 2:
    num_steps, batch_shape = xs_shape[0], ()
  elif time_major:
    num_steps, batch_shape = xs_shape[0], (xs_shape[1],)
  else:
    num_steps, batch_shape = xs_shape[1], (xs_shape[0],)
  if num_steps == 0:
    raise ValueError(f"xs must hold at least one step, got T = 0 ({xs_shape}).")
  for leaf in jax.tree.leaves(carry0):
    leaf_shape = jnp.shape(leaf)
    if leaf_shape[: len(batch_shape)] != batch_shape or not leaf_shape:
      raise ValueError(
        f"carry0 leaves must have leading batch shape {batch_shape} to match "
        f"xs {xs_shape}, got a leaf of shape {leaf_shape}."
      )
  if lengths is not None:
    validation.check_lengths("lengths", lengths, num_steps, batch_shape)
  return num_steps, batch_shape


def unroll(
  cell_fn: CellFn,
  params: Params,
  xs: jax.Array,
  carry0: PyTree,
  *,
  lengths: jax.Array | None = None,
  time_major: bool = True,
  reverse: bool = False,
  unroll: int | bool = 1,
) -> tuple[PyTree, jax.Array]:
  """Runs `cell_fn` over a sequence with one `jax.lax.scan`.

  Variable-length batches: with `lengths`, steps `t >= lengths[b]` leave the
  carry of sequence b unchanged and emit zeros, so the returned carry is the
  one after the last valid step. With `reverse=True` the scan runs from step
  T-1 down to 0; padding (at the end) is then passed over first with the
  carry held at `carry0`, so each sequence is read backwards from its own
  last valid step.

  Args:
    cell_fn: `(params, carry, x [D]) -> (carry, output)` on one example.
    params: the cell's parameters (shared over time and batch).
    xs: `[T, D]` (one sequence), `[T, B, D]` (time-major) or `[B, T, D]`
      (batch-major).
    carry0: the initial carry; its leaves have a leading batch axis [B, ...]
      whenever `xs` is batched.
    lengths: optional integer lengths, `[B]` (a scalar for one sequence),
      each in [0, T] (checked when concrete).
    time_major: the layout of a batched `xs` and of the outputs.
    reverse: run from the last step to the first.
    unroll: `lax.scan`'s unroll factor (an int >= 1, or True for a full
      unroll).

  Returns:
    `(final_carry, outputs)`, outputs `[T, ...]`, `[T, B, ...]` or
    `[B, T, ...]` following `xs`.

  Raises:
    TypeError: if `cell_fn` is not callable or `unroll` not an int.
    ValueError: for xs of the wrong rank, T = 0, a carry whose batch size
      differs from xs', bad lengths or an unroll factor below 1.
  """
  _, batch_shape = _check_unroll(
    cell_fn, xs, carry0, lengths, time_major, unroll
  )
  if not batch_shape:
    return _unroll_one(cell_fn, params, xs, carry0, lengths, reverse, unroll)
  axis = 1 if time_major else 0
  run = lambda x, c, n: _unroll_one(cell_fn, params, x, c, n, reverse, unroll)
  if lengths is None:
    return jax.vmap(lambda x, c: run(x, c, None), (axis, 0), (0, axis))(
      xs, carry0
    )
  return jax.vmap(run, (axis, 0, 0), (0, axis))(xs, carry0, lengths)


_generic_unroll = unroll  # `elman_unroll`'s `unroll` argument shadows it.


def _elman_recurrence(params: Params, h: jax.Array, xw: jax.Array):
  """`h_t = tanh(xw_t + W_hh h_{t-1})`, xw_t the precomputed input term."""
  h = jnp.tanh(xw + params["W_hh"] @ h)
  return h, h


def elman_unroll(
  params: Params,
  xs: jax.Array,
  h0: jax.Array,
  *,
  lengths: jax.Array | None = None,
  time_major: bool = True,
  reverse: bool = False,
  unroll: int | bool = 1,
) -> tuple[jax.Array, jax.Array]:
  """`unroll(elman_cell, ...)` with the input term hoisted out of the scan.

  `W_xh x_t + b_h` does not depend on the carry, so it is computed for all
  steps as one large matrix product before the scan; each scan step then
  does only the recurrent product `W_hh h_{t-1}`. Same results as
  `unroll(elman_cell, params, xs, h0, ...)`, faster.

  Args:
    params: `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)` (other keys ignored).
    xs: `[T, D]`, `[T, B, D]` or `[B, T, D]` (see `unroll`).
    h0: `[H]` or `[B, H]`.
    lengths: optional valid lengths (see `unroll`).
    time_major: layout of a batched `xs`.
    reverse: run from the last step to the first.
    unroll: `lax.scan`'s unroll factor.

  Returns:
    `(h_last, hs)` as `unroll`.

  Raises:
    TypeError: if `params` is not a dict.
    ValueError: as `unroll`, for missing or mis-shaped params, if D differs
      from `W_xh`'s or H from `W_hh`'s.
  """
  hidden, dim, _ = validation.check_elman_params(params, readout=False)
  if not jnp.ndim(xs) or jnp.shape(xs)[-1] != dim:
    raise ValueError(
      f"xs must end in the input size D = {dim} (from W_xh), got "
      f"{jnp.shape(xs)}."
    )
  if not jnp.ndim(h0) or jnp.shape(h0)[-1] != hidden:
    raise ValueError(
      f"h0 must end in the hidden size H = {hidden} (from W_hh), got "
      f"{jnp.shape(h0)}."
    )
  bias = params["b_h"].reshape((1,) * (jnp.ndim(xs) - 1) + (-1,))
  xw = xs @ params["W_xh"].T + bias
  return _generic_unroll(
    _elman_recurrence,
    params,
    xw,
    h0,
    lengths=lengths,
    time_major=time_major,
    reverse=reverse,
    unroll=unroll,
  )
