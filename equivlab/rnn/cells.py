"""Recurrent cells as pure functions, and their initial parameters.

A cell is `(params, carry, x) -> (carry, output)` on one example: the Elman
(tanh) recurrence (Elman 1990), the LSTM and the GRU. Weight matrices are
stored (out, in), as in the equations, so a cell computes `W @ x`.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks

PyTree = Any
#: A cell's parameters, its arrays by name.
Params = dict[str, jax.Array]
CellFn = Callable[[Params, PyTree, jax.Array], tuple[PyTree, jax.Array]]

ELMAN_KEYS = ("W_xh", "W_hh", "b_h", "W_hz", "b_z")


class LSTMState(NamedTuple):
  """The carry of an LSTM: the memory cell `c` and the output `h`, [H] each."""

  c: jax.Array
  h: jax.Array


def float_dtype(dtype: Any):
  """A parameter dtype given as a dtype, scalar type or name ("bf16").

  Raises:
    TypeError: for a dtype that is not a float (see `checks.float_dtype`).
  """
  return jax.dtypes.canonicalize_dtype(checks.float_dtype("dtype", dtype))


def _orthogonal(key, size: int, dtype) -> jax.Array:
  """A random orthogonal `[size, size]`; QR runs in float32 at least (XLA
  has no bfloat16 or float16 QR), then the result is cast to `dtype`."""
  wide = jnp.promote_types(dtype, jnp.float32)
  return nn.initializers.orthogonal()(key, (size, size), wide).astype(dtype)


def _check_sizes(input_size: Any, hidden_size: Any) -> None:
  checks.check_int("input_size", input_size, minimum=1)
  checks.check_int("hidden_size", hidden_size, minimum=1)


def init_elman(
  key: chex.PRNGKey,
  input_size: int,
  hidden_size: int,
  output_size: int | None = None,
  *,
  recurrent_scale: float = 1.0,
  dtype: Any = jnp.float32,
) -> Params:
  """Initial parameters of an Elman network (`W_xh`, `W_hh`, `b_h`, ...).

  `W_xh` is LeCun-normal, `W_hh` a random orthogonal matrix times
  `recurrent_scale` (its spectral radius), biases zero.

  Args:
    key: a PRNG key.
    input_size: D.
    hidden_size: H.
    output_size: K; when None, only the cell's `W_xh, W_hh, b_h` are made.
    recurrent_scale: the gain of the orthogonal `W_hh`.
    dtype: the parameter dtype, a float dtype or its name ("float32",
      "bf16", ...).

  Returns:
    A dict with `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)` and, with an output
    size, `W_hz (K, H)`, `b_z (K,)`.

  Raises:
    TypeError: for sizes that are not ints, a scale that is not a number
      or a dtype that is not a float.
    ValueError: for sizes below 1 or a scale that is not finite.
  """
  _check_sizes(input_size, hidden_size)
  dtype = float_dtype(dtype)
  checks.check_int("output_size", output_size, minimum=1, allow_none=True)
  checks.check_number("recurrent_scale", recurrent_scale)
  k_xh, k_hh, k_hz = jax.random.split(key, 3)
  params = {
    "W_xh": jax.random.normal(k_xh, (hidden_size, input_size), dtype)
    / float(np.sqrt(input_size)),
    "W_hh": recurrent_scale * _orthogonal(k_hh, hidden_size, dtype),
    "b_h": jnp.zeros((hidden_size,), dtype),
  }
  if output_size is not None:
    params["W_hz"] = jax.random.normal(
      k_hz, (output_size, hidden_size), dtype
    ) / float(np.sqrt(hidden_size))
    params["b_z"] = jnp.zeros((output_size,), dtype)
  return params


def elman_cell(
  params: Params, h: jax.Array, x: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """One Elman step, `h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)`.

  Args:
    params: `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)` (other keys ignored).
    h: the previous hidden state [H].
    x: the input [D].

  Returns:
    `(h_t, h_t)`: the new carry and the output, [H] each.
  """
  h = jnp.tanh(params["W_xh"] @ x + params["W_hh"] @ h + params["b_h"])
  return h, h


def _stacked_orthogonal(key, hidden_size, num_gates, dtype):
  """`num_gates` orthogonal [H, H] blocks stacked into [num_gates * H, H]."""
  h = hidden_size
  return jnp.concatenate(
    [_orthogonal(k, h, dtype) for k in jax.random.split(key, num_gates)]
  )


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
    dtype: the parameter dtype, a float dtype or its name ("float32",
      "bf16", ...).

  Returns:
    A dict with `W_x (4H, D)`, `W_h (4H, H)` and `b (4H,)`.

  Raises:
    TypeError: for sizes that are not ints, a bias that is not a number or
      a dtype that is not a float.
    ValueError: for sizes below 1 or a bias that is not finite.
  """
  _check_sizes(input_size, hidden_size)
  dtype = float_dtype(dtype)
  checks.check_number("forget_bias", forget_bias)
  k_x, k_h = jax.random.split(key)
  h = hidden_size
  return {
    "W_x": jax.random.normal(k_x, (4 * h, input_size), dtype)
    / float(np.sqrt(input_size)),
    "W_h": _stacked_orthogonal(k_h, h, 4, dtype),
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
    dtype: the parameter dtype, a float dtype or its name ("float32",
      "bf16", ...).

  Returns:
    A dict with `W_x (3H, D)`, `W_h (3H, H)`, `b_x (3H,)`, `b_h (3H,)`.

  Raises:
    TypeError: for sizes that are not ints or a dtype that is not a float.
    ValueError: for sizes below 1.
  """
  _check_sizes(input_size, hidden_size)
  dtype = float_dtype(dtype)
  k_x, k_h = jax.random.split(key)
  h = hidden_size
  return {
    "W_x": jax.random.normal(k_x, (3 * h, input_size), dtype)
    / float(np.sqrt(input_size)),
    "W_h": _stacked_orthogonal(k_h, h, 3, dtype),
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


#: The cells by name ("elman", "lstm" and "gru").
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
  checks.check_choice("cell", name, sorted(CELLS))
  return CELLS[name]
