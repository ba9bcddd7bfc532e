"""Scanned recurrent networks and hand-written backpropagation through time.

Pure functions first: cells `(params, carry, x) -> (carry, output)` for the
Elman (tanh), LSTM and GRU recurrences, one `unroll` over any cell built on
`jax.lax.scan`, the seed 000 model (`elman_loss`, `elman_bptt`), truncated
BPTT and a probe of how the gradient of the last loss decays back in time.
The flax module `Recurrent` is a thin wrapper over the same functions.

Notation of seed 000 part 2 (one sequence; batch with `jax.vmap`):

  h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h),  z_t = softmax(W_hz h_t + b_z),
  L = sum_t -log z_t[y_t].

Weight matrices are stored (out, in), as in the equations, so a cell computes
`W @ x` on one example.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Params = dict[str, jax.Array]
CellFn = Callable[[Params, PyTree, jax.Array], tuple[PyTree, jax.Array]]

ELMAN_KEYS = ("W_xh", "W_hh", "b_h", "W_hz", "b_z")


class LSTMState(NamedTuple):
  """The carry of an LSTM: the memory cell `c` and the output `h`, [H] each."""

  c: jax.Array
  h: jax.Array


# ----------------------------------------------------------------------------
# Input checks.


def _concrete(x: Any) -> np.ndarray | None:
  """`x` as a NumPy array when it is known at trace time, else None."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, TypeError):
    return None
  except jax.errors.ConcretizationTypeError:
    return None


def _check_lengths(lengths: Any, num_steps: int, batch_shape: tuple) -> None:
  """Validates sequence lengths: integer, shaped like the batch, <= T."""
  lengths_shape = jnp.shape(lengths)
  if lengths_shape != batch_shape:
    raise ValueError(
      f"lengths must have shape {batch_shape} (one per sequence), got "
      f"{lengths_shape}."
    )
  if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
    raise ValueError(
      f"lengths must be integers, got dtype {jnp.result_type(lengths)}."
    )
  value = _concrete(lengths)
  if value is not None and value.size:
    if value.max() > num_steps:
      raise ValueError(
        f"lengths must be <= the number of steps T = {num_steps}, got a "
        f"length of {int(value.max())}."
      )
    if value.min() < 0:
      raise ValueError(f"lengths must be non-negative, got {int(value.min())}.")


def _check_elman(params: Params, xs, ys, h0) -> None:
  """Validates the arguments of the seed 000 model (one sequence)."""
  if not isinstance(params, dict) or set(params) != set(ELMAN_KEYS):
    got = sorted(params) if isinstance(params, dict) else type(params)
    raise ValueError(
      f"params must be a dict with keys {sorted(ELMAN_KEYS)}, got {got}."
    )
  shapes = {k: jnp.shape(v) for k, v in params.items()}
  if len(shapes["W_hh"]) != 2 or shapes["W_hh"][0] != shapes["W_hh"][1]:
    raise ValueError(f"W_hh must be square (H, H), got {shapes['W_hh']}.")
  hidden = shapes["W_hh"][0]
  if len(shapes["W_hz"]) != 2:
    raise ValueError(f"W_hz must be (K, H), got {shapes['W_hz']}.")
  classes = shapes["W_hz"][0]
  if len(shapes["W_xh"]) != 2:
    raise ValueError(f"W_xh must be (H, D), got {shapes['W_xh']}.")
  dim = shapes["W_xh"][1]
  expected = {
    "W_xh": (hidden, dim),
    "b_h": (hidden,),
    "W_hz": (classes, hidden),
    "b_z": (classes,),
  }
  for key, shape in expected.items():
    if shapes[key] != shape:
      raise ValueError(
        f"params[{key!r}] must have shape {shape} for H={hidden}, D={dim}, "
        f"K={classes}; got {shapes[key]}."
      )
  xs_shape, ys_shape, h0_shape = jnp.shape(xs), jnp.shape(ys), jnp.shape(h0)
  if len(xs_shape) != 2:
    raise ValueError(f"xs must be [T, D], got shape {xs_shape}.")
  if xs_shape[0] == 0:
    raise ValueError("xs must hold at least one step, got T = 0.")
  if xs_shape[1] != dim:
    raise ValueError(
      f"xs must be [T, D] with D = {dim} (from W_xh), got {xs_shape}."
    )
  if ys_shape != (xs_shape[0],):
    raise ValueError(
      f"ys must be [T] = ({xs_shape[0]},) to match xs, got {ys_shape}."
    )
  if not jnp.issubdtype(jnp.result_type(ys), jnp.integer):
    raise ValueError(
      f"ys must hold integer class labels, got dtype {jnp.result_type(ys)}."
    )
  if h0_shape != (hidden,):
    raise ValueError(f"h0 must have shape ({hidden},), got {h0_shape}.")


# ----------------------------------------------------------------------------
# Cells and their parameters.


def init_elman(
  key: chex.PRNGKey,
  input_size: int,
  hidden_size: int,
  output_size: int | None = None,
  *,
  recurrent_scale: float = 1.0,
  dtype: Any = jnp.float32,
) -> Params:
  """Initial parameters of an Elman network (seed 000's keys).

  `W_xh` is LeCun-normal, `W_hh` a random orthogonal matrix times
  `recurrent_scale` (its spectral radius), biases zero.

  Args:
    key: a PRNG key.
    input_size: D.
    hidden_size: H.
    output_size: K; when None, only the cell's `W_xh, W_hh, b_h` are made.
    recurrent_scale: the gain of the orthogonal `W_hh`.
    dtype: the parameter dtype.

  Returns:
    A dict with `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)` and, with an output
    size, `W_hz (K, H)`, `b_z (K,)`.
  """
  k_xh, k_hh, k_hz = jax.random.split(key, 3)
  params = {
    "W_xh": jax.random.normal(k_xh, (hidden_size, input_size), dtype)
    / np.sqrt(input_size),
    "W_hh": recurrent_scale
    * nn.initializers.orthogonal()(k_hh, (hidden_size, hidden_size), dtype),
    "b_h": jnp.zeros((hidden_size,), dtype),
  }
  if output_size is not None:
    params["W_hz"] = jax.random.normal(
      k_hz, (output_size, hidden_size), dtype
    ) / np.sqrt(hidden_size)
    params["b_z"] = jnp.zeros((output_size,), dtype)
  return params


def elman_cell(
  params: Params, h: jax.Array, x: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """One Elman step, `h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)` (seed 000).

  Args:
    params: `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)` (other keys ignored).
    h: the previous hidden state [H].
    x: the input [D].

  Returns:
    `(h_t, h_t)`: the new carry and the output, [H] each.
  """
  h = jnp.tanh(params["W_xh"] @ x + params["W_hh"] @ h + params["b_h"])
  return h, h


def init_lstm(
  key: chex.PRNGKey,
  input_size: int,
  hidden_size: int,
  *,
  forget_bias: float = 1.0,
  dtype: Any = jnp.float32,
) -> Params:
  """Initial LSTM parameters, gates stacked in the order (i, f, g, o).

  The forget-gate bias starts at `forget_bias` (1.0, Gers et al. 2000;
  Jozefowicz et al. 2015) so the memory cell keeps its content at first.

  Args:
    key: a PRNG key.
    input_size: D.
    hidden_size: H.
    forget_bias: the initial bias of the forget gate.
    dtype: the parameter dtype.

  Returns:
    A dict with `W_x (4H, D)`, `W_h (4H, H)` and `b (4H,)`.
  """
  k_x, k_h = jax.random.split(key)
  h = hidden_size
  w_h = jnp.concatenate(
    [
      nn.initializers.orthogonal()(k, (h, h), dtype)
      for k in jax.random.split(k_h, 4)
    ]
  )
  return {
    "W_x": jax.random.normal(k_x, (4 * h, input_size), dtype)
    / np.sqrt(input_size),
    "W_h": w_h,
    "b": jnp.zeros((4 * h,), dtype).at[h : 2 * h].set(forget_bias),
  }


def lstm_cell(
  params: Params, carry: LSTMState, x: jax.Array
) -> tuple[LSTMState, jax.Array]:
  """One LSTM step (Hochreiter & Schmidhuber 1997, with a forget gate).

  i, f, o = sigmoid(.), g = tanh(.) of `W_x x + W_h h + b` split in four;
  `c' = f * c + i * g`, `h' = o * tanh(c')` (flax `nn.LSTMCell`'s equations).

  Args:
    params: `W_x (4H, D)`, `W_h (4H, H)`, `b (4H,)`.
    carry: `LSTMState(c [H], h [H])`.
    x: the input [D].

  Returns:
    `(LSTMState(c', h'), h')`.
  """
  pre = params["W_x"] @ x + params["W_h"] @ carry.h + params["b"]
  i, f, g, o = jnp.split(pre, 4)
  c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return LSTMState(c, h), h


def init_gru(
  key: chex.PRNGKey,
  input_size: int,
  hidden_size: int,
  *,
  dtype: Any = jnp.float32,
) -> Params:
  """Initial GRU parameters, gates stacked in the order (r, z, n).

  Args:
    key: a PRNG key.
    input_size: D.
    hidden_size: H.
    dtype: the parameter dtype.

  Returns:
    A dict with `W_x (3H, D)`, `W_h (3H, H)`, `b_x (3H,)`, `b_h (3H,)`.
  """
  k_x, k_h = jax.random.split(key)
  h = hidden_size
  w_h = jnp.concatenate(
    [
      nn.initializers.orthogonal()(k, (h, h), dtype)
      for k in jax.random.split(k_h, 3)
    ]
  )
  return {
    "W_x": jax.random.normal(k_x, (3 * h, input_size), dtype)
    / np.sqrt(input_size),
    "W_h": w_h,
    "b_x": jnp.zeros((3 * h,), dtype),
    "b_h": jnp.zeros((3 * h,), dtype),
  }


def gru_cell(
  params: Params, h: jax.Array, x: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """One GRU step (Cho et al. 2014), in flax `nn.GRUCell`'s form.

  r, z = sigmoid(.), `n = tanh(W_xn x + b_xn + r * (W_hn h + b_hn))`,
  `h' = (1 - z) * n + z * h`.

  Args:
    params: `W_x (3H, D)`, `W_h (3H, H)`, `b_x (3H,)`, `b_h (3H,)`.
    h: the previous hidden state [H].
    x: the input [D].

  Returns:
    `(h', h')`.
  """
  gx = params["W_x"] @ x + params["b_x"]
  gh = params["W_h"] @ h + params["b_h"]
  rx, zx, nx = jnp.split(gx, 3)
  rh, zh, nh = jnp.split(gh, 3)
  r = jax.nn.sigmoid(rx + rh)
  z = jax.nn.sigmoid(zx + zh)
  n = jnp.tanh(nx + r * nh)
  h = (1.0 - z) * n + z * h
  return h, h


class Cell(NamedTuple):
  """A recurrent cell as three pure functions.

  Attributes:
    init: `(key, input_size, hidden_size) -> params`.
    apply: `(params, carry, x) -> (carry, output)` on one example.
    zero_carry: `(hidden_size, batch_shape=(), dtype) -> carry` of zeros.
  """

  init: Callable[..., Params]
  apply: CellFn
  zero_carry: Callable[..., PyTree]


def _zeros_h(hidden_size, batch_shape=(), dtype=jnp.float32):
  return jnp.zeros((*batch_shape, hidden_size), dtype)


def _zeros_lstm(hidden_size, batch_shape=(), dtype=jnp.float32):
  z = jnp.zeros((*batch_shape, hidden_size), dtype)
  return LSTMState(z, z)


CELLS = {
  "elman": Cell(init_elman, elman_cell, _zeros_h),
  "lstm": Cell(init_lstm, lstm_cell, _zeros_lstm),
  "gru": Cell(init_gru, gru_cell, _zeros_h),
}


def get_cell(name: str) -> Cell:
  """The cell called `name`: "elman", "lstm" or "gru".

  Raises:
    ValueError: for any other name.
  """
  if name not in CELLS:
    raise ValueError(f"cell must be one of {sorted(CELLS)}, got {name!r}.")
  return CELLS[name]


# ----------------------------------------------------------------------------
# The unroll.


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
  """
  lengths = jnp.asarray(lengths)
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
      each in [0, T].
    time_major: the layout of a batched `xs` and of the outputs.
    reverse: run from the last step to the first.
    unroll: `lax.scan`'s unroll factor (an int, or True for a full unroll).

  Returns:
    `(final_carry, outputs)`, outputs `[T, ...]`, `[T, B, ...]` or
    `[B, T, ...]` following `xs`.

  Raises:
    ValueError: for xs of the wrong rank, T = 0, a carry whose batch size
      differs from xs', or bad lengths.
  """
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
    _check_lengths(lengths, num_steps, batch_shape)
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
    params: `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)`.
    xs: `[T, D]`, `[T, B, D]` or `[B, T, D]` (see `unroll`).
    h0: `[H]` or `[B, H]`.
    lengths: optional valid lengths (see `unroll`).
    time_major: layout of a batched `xs`.
    reverse: run from the last step to the first.
    unroll: `lax.scan`'s unroll factor.

  Returns:
    `(h_last, hs)` as `unroll`.

  Raises:
    ValueError: as `unroll`, or if D differs from `W_xh`'s.
  """
  dim = jnp.shape(params["W_xh"])[1]
  if not jnp.ndim(xs) or jnp.shape(xs)[-1] != dim:
    raise ValueError(
      f"xs must end in the input size D = {dim} (from W_xh), got "
      f"{jnp.shape(xs)}."
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


# ----------------------------------------------------------------------------
# The seed 000 model: Elman network, softmax output, summed cross-entropy.


def _step_mask(num_steps: int, length: jax.Array | None, dtype) -> jax.Array:
  if length is None:
    return jnp.ones((num_steps,), dtype)
  return (jnp.arange(num_steps) < length).astype(dtype)


def elman_logits(
  params: Params,
  xs: jax.Array,
  h0: jax.Array,
  *,
  length: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The forward pass of seed 000's network on one sequence.

  Args:
    params: `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)`, `W_hz (K, H)`, `b_z (K,)`.
    xs: inputs [T, D].
    h0: the initial hidden state [H].
    length: optional number of valid steps (the carry is held after it).

  Returns:
    `(logits [T, K], h_last [H])`: pre-softmax outputs `W_hz h_t + b_z`,
    and the hidden state after the last valid step.
  """
  h_last, hs = unroll(elman_cell, params, xs, h0, lengths=length)
  logits = _readout(params, hs)
  return logits, h_last


def _readout(params: Params, hs: jax.Array) -> jax.Array:
  """`W_hz h + b_z` on [..., H] -> [..., K]."""
  bias = params["b_z"].reshape((1,) * (hs.ndim - 1) + (-1,))
  return hs @ params["W_hz"].T + bias


def _cross_entropy(logits: jax.Array, ys: jax.Array) -> jax.Array:
  """`-log softmax(logits)[y]` per step: [T, K], [T] -> [T]."""
  picked = jnp.take_along_axis(logits, ys[:, None], axis=1)[:, 0]
  return jax.nn.logsumexp(logits, axis=1) - picked


def elman_loss(
  params: Params,
  xs: jax.Array,
  ys: jax.Array,
  h0: jax.Array,
  *,
  length: jax.Array | None = None,
) -> jax.Array:
  """Seed 000's loss `L = sum_t -log z_t[y_t]` for one sequence.

  Args:
    params: `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)`, `W_hz (K, H)`, `b_z (K,)`.
    xs: inputs [T, D].
    ys: integer labels [T], in [0, K).
    h0: the initial hidden state [H].
    length: optional number of valid steps; later steps add no loss.

  Returns:
    The summed cross-entropy, a scalar.

  Raises:
    ValueError: for missing or mis-shaped params, mismatched dims, non-integer
      labels, T = 0 or a length longer than T.
  """
  _check_elman(params, xs, ys, h0)
  logits, _ = elman_logits(params, xs, h0, length=length)
  mask = _step_mask(xs.shape[0], length, logits.dtype)
  return jnp.sum(mask * _cross_entropy(logits, ys))


def _elman_bptt_full(params, xs, ys, h0, length):
  """The hand-written BPTT; returns (loss, grads, dL/dh0, h_last)."""
  num_steps = xs.shape[0]
  w_xh, w_hh, b_h = params["W_xh"], params["W_hh"], params["b_h"]
  w_hz = params["W_hz"]
  mask = _step_mask(num_steps, length, xs.dtype)

  # Forward: h_t = m_t tanh(a_t) + (1 - m_t) h_{t-1}, storing h_{t-1}, h_t.
  def forward(h_prev, inputs):
    x, m = inputs
    h_new = jnp.tanh(w_xh @ x + w_hh @ h_prev + b_h)
    h = m * h_new + (1 - m) * h_prev
    return h, (h_prev, h)

  h_last, (h_prevs, hs) = jax.lax.scan(forward, h0, (xs, mask))
  logits = _readout(params, hs)
  loss = jnp.sum(mask * _cross_entropy(logits, ys))

  # dL/do_t = z_t - onehot(y_t) for the softmax cross-entropy (seed 000).
  probs = jax.nn.softmax(logits, axis=1)
  onehot = jax.nn.one_hot(ys, logits.shape[1], dtype=logits.dtype)
  d_out = mask[:, None] * (probs - onehot)  # [T, K]
  d_from_out = d_out @ w_hz  # W_hz^T dL/do_t for every t: [T, H]

  # Backward in time: dL/dh_t = dL/do_t do_t/dh_t + dL/dh_{t+1} dh_{t+1}/dh_t.
  def backward(dh_next, inputs):
    d_local, h, m = inputs
    dh = d_local + dh_next
    da = m * dh * (1 - h * h)  # through tanh; zero on padded steps
    dh_prev = w_hh.T @ da + (1 - m) * dh  # a held carry passes dh through
    return dh_prev, da

  dh0, das = jax.lax.scan(
    backward, jnp.zeros_like(h0), (d_from_out, hs, mask), reverse=True
  )
  grads = {
    "W_xh": das.T @ xs,
    "W_hh": das.T @ h_prevs,
    "b_h": jnp.sum(das, axis=0),
    "W_hz": d_out.T @ hs,
    "b_z": jnp.sum(d_out, axis=0),
  }
  return loss, grads, dh0, h_last


def elman_bptt(
  params: Params,
  xs: jax.Array,
  ys: jax.Array,
  h0: jax.Array,
  *,
  length: jax.Array | None = None,
) -> tuple[jax.Array, Params]:
  """`elman_loss` and its gradient by seed 000's backward equations.

  A forward `lax.scan` stores h_{t-1} and h_t; a reverse `lax.scan` carries
  `dL/dh_{t+1} dh_{t+1}/dh_t = W_hh^T delta_{t+1}` back in time and adds the
  local term `W_hz^T (z_t - onehot(y_t))`; the weight gradients are the
  sums over t of outer products, taken as matrix products after the scan.
  No `jax.grad` is involved.

  Args:
    params: `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)`, `W_hz (K, H)`, `b_z (K,)`.
    xs: inputs [T, D].
    ys: integer labels [T].
    h0: the initial hidden state [H].
    length: optional number of valid steps.

  Returns:
    `(loss, grads)`, grads a dict shaped like `params`.

  Raises:
    ValueError: as `elman_loss`.
  """
  _check_elman(params, xs, ys, h0)
  if length is not None:
    _check_lengths(length, xs.shape[0], ())
  loss, grads, _, _ = _elman_bptt_full(params, xs, ys, h0, length)
  return loss, grads


def _check_batch(xs, ys, h0, lengths):
  if jnp.ndim(xs) != 3 or jnp.ndim(ys) != 2 or jnp.ndim(h0) != 2:
    raise ValueError(
      "batched Elman functions take xs [B, T, D], ys [B, T], h0 [B, H]; got "
      f"{jnp.shape(xs)}, {jnp.shape(ys)}, {jnp.shape(h0)}."
    )
  batch = jnp.shape(xs)[0]
  if jnp.shape(ys)[0] != batch or jnp.shape(h0)[0] != batch:
    raise ValueError(
      f"xs, ys and h0 must share the batch size {batch}, got "
      f"{jnp.shape(ys)[0]} and {jnp.shape(h0)[0]}."
    )
  if lengths is not None:
    _check_lengths(lengths, jnp.shape(xs)[1], (batch,))


def elman_loss_batch(
  params: Params,
  xs: jax.Array,
  ys: jax.Array,
  h0: jax.Array,
  lengths: jax.Array | None = None,
) -> jax.Array:
  """The sum over a batch of `elman_loss` (vmapped), padded steps masked.

  Args:
    params: as `elman_loss`.
    xs: [B, T, D] inputs.
    ys: [B, T] integer labels.
    h0: [B, H] initial states.
    lengths: optional [B] valid lengths.

  Returns:
    The scalar summed loss.
  """
  _check_batch(xs, ys, h0, lengths)
  if lengths is None:
    losses = jax.vmap(elman_loss, (None, 0, 0, 0))(params, xs, ys, h0)
  else:
    losses = jax.vmap(lambda x, y, h, n: elman_loss(params, x, y, h, length=n))(
      xs, ys, h0, lengths
    )
  return jnp.sum(losses)


def elman_bptt_batch(
  params: Params,
  xs: jax.Array,
  ys: jax.Array,
  h0: jax.Array,
  lengths: jax.Array | None = None,
) -> tuple[jax.Array, Params]:
  """`elman_bptt` vmapped over a batch; losses and gradients summed.

  Args:
    params: as `elman_loss`.
    xs: [B, T, D] inputs.
    ys: [B, T] integer labels.
    h0: [B, H] initial states.
    lengths: optional [B] valid lengths.

  Returns:
    `(loss, grads)` summed over the batch.
  """
  _check_batch(xs, ys, h0, lengths)
  if lengths is None:
    fn = lambda x, y, h: elman_bptt(params, x, y, h)
    losses, grads = jax.vmap(fn)(xs, ys, h0)
  else:
    fn = lambda x, y, h, n: elman_bptt(params, x, y, h, length=n)
    losses, grads = jax.vmap(fn)(xs, ys, h0, lengths)
  return jnp.sum(losses), jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)


# ----------------------------------------------------------------------------
# Truncated backpropagation through time (seed 004 6(h)-(i)).


def _segments(tree: PyTree, tau: int, num_steps: int) -> PyTree:
  """Reshapes leading-axis-T leaves to [T // tau, tau, ...]."""
  return jax.tree.map(
    lambda a: a.reshape((num_steps // tau, tau) + a.shape[1:]), tree
  )


def _check_tau(tau: int, num_steps: int) -> None:
  if not isinstance(tau, int | np.integer) or tau < 1:
    raise ValueError(f"tau must be a positive int, got {tau!r}.")
  if num_steps == 0 or num_steps % tau:
    raise ValueError(
      f"T must be a positive multiple of tau = {tau}, got T = {num_steps}."
    )


def tbptt_grads(
  segment_loss: Callable[..., tuple[jax.Array, PyTree]],
  params: PyTree,
  xs: jax.Array,
  ys: jax.Array,
  carry0: PyTree,
  tau: int,
) -> tuple[jax.Array, PyTree, PyTree]:
  """The truncated-BPTT gradient of a long sequence at fixed parameters.

  The sequence is cut into T / tau segments. Each segment's loss is
  differentiated with its initial carry held constant (`stop_gradient`), so
  no gradient flows across a segment boundary; the forward state still
  does. Segments run in a `lax.scan`, so memory per segment is O(tau).
  With tau = T this is the full BPTT gradient.

  Args:
    segment_loss: `(params, xs [tau, ...], ys [tau, ...], carry) ->
      (loss, final_carry)`, e.g. `elman_segment_loss`.
    params: the parameters.
    xs: [T, ...] inputs (T a multiple of tau).
    ys: [T, ...] targets.
    carry0: the initial carry.
    tau: the segment length.

  Returns:
    `(loss, grads, final_carry)`: the summed loss over all T steps, the sum
    of the per-segment gradients, and the carry after step T.

  Raises:
    ValueError: if tau is not a positive divisor of T.
  """
  num_steps = jnp.shape(xs)[0]
  _check_tau(tau, num_steps)
  grad_fn = jax.value_and_grad(segment_loss, has_aux=True)
  zero = jax.tree.map(jnp.zeros_like, params)

  def body(acc, segment):
    loss_acc, grad_acc, carry = acc
    x, y = segment
    (loss, carry), grads = grad_fn(params, x, y, jax.lax.stop_gradient(carry))
    grad_acc = jax.tree.map(jnp.add, grad_acc, grads)
    return (loss_acc + loss, grad_acc, carry), None

  loss0 = jnp.zeros((), jax.tree.leaves(params)[0].dtype)
  (loss, grads, carry), _ = jax.lax.scan(
    body,
    (loss0, zero, carry0),
    (_segments(xs, tau, num_steps), _segments(ys, tau, num_steps)),
  )
  return loss, grads, carry


def tbptt_train(
  segment_loss: Callable[..., tuple[jax.Array, PyTree]],
  optimizer: Any,
  params: PyTree,
  opt_state: PyTree,
  xs: jax.Array,
  ys: jax.Array,
  carry0: PyTree,
  tau: int,
) -> tuple[PyTree, PyTree, jax.Array, PyTree]:
  """Trains on a long sequence with one update per segment of length tau.

  The carry crosses each boundary forward with `stop_gradient`; every update
  costs O(tau) memory and compute, not O(T) (seed 004 6(i)).

  Args:
    segment_loss: `(params, xs_seg, ys_seg, carry) -> (loss, final_carry)`.
    optimizer: an `optax.GradientTransformation`.
    params: the parameters.
    opt_state: `optimizer.init(params)`.
    xs: [T, ...] inputs (T a multiple of tau).
    ys: [T, ...] targets.
    carry0: the initial carry.
    tau: the segment length.

  Returns:
    `(params, opt_state, losses [T // tau], final_carry)`.

  Raises:
    ValueError: if tau is not a positive divisor of T.
  """
  num_steps = jnp.shape(xs)[0]
  _check_tau(tau, num_steps)
  grad_fn = jax.value_and_grad(segment_loss, has_aux=True)

  def body(state, segment):
    params, opt_state, carry = state
    x, y = segment
    (loss, carry), grads = grad_fn(params, x, y, jax.lax.stop_gradient(carry))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jax.tree.map(jnp.add, params, updates)
    return (params, opt_state, carry), loss

  (params, opt_state, carry), losses = jax.lax.scan(
    body,
    (params, opt_state, carry0),
    (_segments(xs, tau, num_steps), _segments(ys, tau, num_steps)),
  )
  return params, opt_state, losses, carry


def elman_segment_loss(
  params: Params, xs: jax.Array, ys: jax.Array, h0: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """`elman_loss` on a segment, also returning the last hidden state.

  Args:
    params: as `elman_loss`.
    xs: [tau, D] or, batched, [tau, B, D] (time-major).
    ys: [tau] or [tau, B] labels.
    h0: [H] or [B, H].

  Returns:
    `(summed loss, h_last)`.
  """
  h_last, hs = unroll(elman_cell, params, xs, h0)
  logits = _readout(params, hs)
  flat = logits.reshape(-1, logits.shape[-1])
  return jnp.sum(_cross_entropy(flat, ys.reshape(-1))), h_last


def elman_tbptt(
  params: Params, xs: jax.Array, ys: jax.Array, h0: jax.Array, tau: int
) -> tuple[jax.Array, Params]:
  """Truncated BPTT for seed 000's model with the hand-written backward pass.

  Runs `elman_bptt` on each segment from the (constant) state reached by
  the forward pass, and sums the segment gradients.

  Args:
    params: as `elman_loss`.
    xs: [T, D] inputs, T a multiple of tau.
    ys: [T] labels.
    h0: [H] initial state.
    tau: the segment length.

  Returns:
    `(loss, grads)`.

  Raises:
    ValueError: as `elman_loss`, or if tau does not divide T.
  """
  _check_elman(params, xs, ys, h0)
  _check_tau(tau, xs.shape[0])

  def body(acc, segment):
    loss_acc, grad_acc, h = acc
    x, y = segment
    loss, grads, _, h = _elman_bptt_full(params, x, y, h, None)
    return (loss_acc + loss, jax.tree.map(jnp.add, grad_acc, grads), h), None

  zero = jax.tree.map(jnp.zeros_like, params)
  loss0 = jnp.zeros((), xs.dtype)
  (loss, grads, _), _ = jax.lax.scan(
    body,
    (loss0, zero, h0),
    (_segments(xs, tau, xs.shape[0]), _segments(ys, tau, xs.shape[0])),
  )
  return loss, grads


# ----------------------------------------------------------------------------
# Gradient-flow probe.


def carry_gradient_norms(
  cell_fn: CellFn,
  params: Params,
  xs: jax.Array,
  carry0: PyTree,
  final_loss: Callable[[jax.Array], jax.Array],
) -> jax.Array:
  """`||dL_T / dh_t||` for every step t of one sequence.

  A zero perturbation e_t is added to the carry after each step and the
  loss at the last step, `final_loss(output_T)`, is differentiated with
  respect to all e_t at once: dL_T/de_t = dL_T/dh_t. For an LSTM the norm
  is taken over the whole carry (c_t, h_t). Vanishing gradients show as a
  geometric decay in T - t (seed 002 problem 4; seed 004 2(c)).

  Args:
    cell_fn: `(params, carry, x) -> (carry, output)`.
    params: the cell's parameters (plus whatever `final_loss` closes over).
    xs: [T, D] one sequence.
    carry0: its initial carry.
    final_loss: a scalar function of the last output [H].

  Returns:
    [T] norms; entry t is the norm of the gradient with respect to the
    carry after step t (0-based), so entry T-1 is the direct one.
  """
  num_steps = jnp.shape(xs)[0]
  if jnp.ndim(xs) != 2 or num_steps == 0:
    raise ValueError(f"xs must be [T, D] with T > 0, got {jnp.shape(xs)}.")
  eps = jax.tree.map(
    lambda c: jnp.zeros((num_steps,) + jnp.shape(c), jnp.result_type(c)),
    carry0,
  )

  def loss_of(eps):
    def step(carry, inputs):
      x, e = inputs
      carry, out = cell_fn(params, carry, x)
      carry = jax.tree.map(jnp.add, carry, e)
      return carry, None

    carry, _ = jax.lax.scan(step, carry0, (xs, eps))
    out = carry.h if isinstance(carry, LSTMState) else carry
    return final_loss(out)

  grads = jax.grad(loss_of)(eps)
  squares = sum(
    jnp.sum(g.reshape(num_steps, -1) ** 2, axis=1)
    for g in jax.tree.leaves(grads)
  )
  return jnp.sqrt(squares)


# ----------------------------------------------------------------------------
# Flax wrapper.


class Recurrent(nn.Module):
  """A thin flax wrapper: a cell's parameters plus `unroll`.

  Attributes:
    cell: "elman", "lstm" or "gru".
    hidden_size: H.
    time_major: layout of batched inputs and outputs.
    scan_unroll: `lax.scan`'s unroll factor.
  """

  cell: str = "elman"
  hidden_size: int = 32
  time_major: bool = False
  scan_unroll: int = 1

  @nn.compact
  def __call__(self, xs, carry0=None, lengths=None, reverse=False):
    """Runs the cell over `xs`.

    Args:
      xs: [T, D], or batched [B, T, D] / [T, B, D] by `time_major`.
      carry0: optional initial carry (zeros by default).
      lengths: optional valid lengths, [B] or a scalar.
      reverse: run backwards in time.

    Returns:
      `(final_carry, outputs)` as `unroll`.
    """
    cell = get_cell(self.cell)
    dim = xs.shape[-1]
    params = self.param(
      "cell", lambda k: cell.init(k, dim, self.hidden_size, dtype=xs.dtype)
    )
    if carry0 is None:
      if xs.ndim == 2:
        batch_shape = ()
      else:
        batch_shape = (xs.shape[1] if self.time_major else xs.shape[0],)
      carry0 = cell.zero_carry(self.hidden_size, batch_shape, xs.dtype)
    return unroll(
      cell.apply,
      params,
      xs,
      carry0,
      lengths=lengths,
      time_major=self.time_major,
      reverse=reverse,
      unroll=self.scan_unroll,
    )
