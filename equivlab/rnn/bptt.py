"""An Elman network with softmax outputs and a summed cross-entropy.

  h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h),  z_t = softmax(W_hz h_t + b_z),
  L = sum_t -log z_t[y_t].

`elman_loss` is the loss (differentiable with `jax.grad`); `elman_bptt`
computes the same loss and its gradient by the hand-derived backward
equations (backpropagation through time, Werbos 1990), a
reverse `lax.scan`, with no `jax.grad`. The `_batch` forms vmap both over a
batch with per-sequence lengths.

Labels. `ys[t]` must lie in [0, K) at every valid step (`t < length`);
labels at padded steps are ignored. Concrete labels are checked eagerly
(ValueError naming `ys`, the label and its index). Inside the caller's
`jit` or `vmap` the labels are tracers and cannot be checked by value: an
out-of-range label then makes the loss and the gradients NaN (never a finite
wrong number). For an error at run time instead, pass `checked=True` and
wrap the caller in `jax.experimental.checkify.checkify`:

  fn = jax.jit(checkify.checkify(functools.partial(elman_loss, checked=True)))
  err, loss = fn(params, xs, ys, h0)
  err.throw()  # JaxRuntimeError (a ValueError): ys must lie in [0, K), ...

`checked=True` also checks traced lengths against [0, T].
"""

import jax
import jax.numpy as jnp

from equivlab.rnn import validation
from equivlab.rnn.cells import Params, elman_cell
from equivlab.rnn.scan import unroll


def step_mask(num_steps: int, length: jax.Array | None, dtype) -> jax.Array:
  """[T] ones at the valid steps t < length, zeros after (all ones: None)."""
  if length is None:
    return jnp.ones((num_steps,), dtype)
  return (jnp.arange(num_steps) < length).astype(dtype)


def readout(params: Params, hs: jax.Array) -> jax.Array:
  """`W_hz h + b_z` on [..., H] -> [..., K]."""
  bias = params["b_z"].reshape((1,) * (hs.ndim - 1) + (-1,))
  return hs @ params["W_hz"].T + bias


def safe_labels(
  ys: jax.Array, num_classes: int, mask: jax.Array | None, dtype
) -> tuple[jax.Array, jax.Array]:
  """Labels safe to gather with, and a per-step factor that flags bad ones.

  Args:
    ys: [T] integer labels.
    num_classes: K.
    mask: [T] step mask (nonzero where valid), or None (all valid).
    dtype: the factor's dtype.

  Returns:
    `(labels, factor)`: labels with padded and out-of-range entries set to
    0; factor 1 everywhere except NaN at an out-of-range label on a valid
    step, so that a bad label turns the loss and gradients NaN instead of
    picking a wrong class (a negative index would wrap around).
  """
  bad = (ys < 0) | (ys >= num_classes)
  if mask is not None:
    bad = bad & (mask > 0)
    ys = jnp.where(mask > 0, ys, 0)
  labels = jnp.where(bad, 0, ys)
  factor = jnp.where(bad, jnp.nan, 1.0).astype(dtype)
  return labels, factor


def cross_entropy(
  logits: jax.Array, ys: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
  """`-log softmax(logits)[y]` per step: [T, K], [T] -> [T] (see above)."""
  labels, factor = safe_labels(ys, logits.shape[1], mask, logits.dtype)
  picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  return factor * (jax.nn.logsumexp(logits, axis=1) - picked)


def check_sequence(params, xs, ys, h0, length, checked) -> int:
  """Validates one sequence's arguments; returns K."""
  validation.check_flag(checked)
  hidden, dim, classes = validation.check_elman_params(params)
  num_steps = validation.check_inputs(xs, h0, hidden, dim)
  validation.check_target_shape(ys, (num_steps,), "[T]")
  if length is not None:
    validation.check_lengths("length", length, num_steps, ())
  validation.check_label_values(ys, classes, length)
  if checked:
    validation.check_at_run_time(
      ys, classes, length, num_steps, lengths_name="length"
    )
  return classes


def elman_logits(
  params: Params,
  xs: jax.Array,
  h0: jax.Array,
  *,
  length: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The forward pass of the Elman network on one sequence.

  Args:
    params: `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)`, `W_hz (K, H)`, `b_z (K,)`.
    xs: inputs [T, D].
    h0: the initial hidden state [H].
    length: optional number of valid steps (the carry is held after it).

  Returns:
    `(logits [T, K], h_last [H])`: pre-softmax outputs `W_hz h_t + b_z`,
    and the hidden state after the last valid step.

  Raises:
    TypeError: if `params` is not a dict.
    ValueError: for missing or mis-shaped params, mismatched dims, T = 0 or
      a bad length.
  """
  hidden, dim, _ = validation.check_elman_params(params)
  validation.check_inputs(xs, h0, hidden, dim)
  h_last, hs = unroll(elman_cell, params, xs, h0, lengths=length)
  return readout(params, hs), h_last


def elman_loss(
  params: Params,
  xs: jax.Array,
  ys: jax.Array,
  h0: jax.Array,
  *,
  length: jax.Array | None = None,
  checked: bool = False,
) -> jax.Array:
  """The loss `L = sum_t -log z_t[y_t]` for one sequence.

  Args:
    params: `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)`, `W_hz (K, H)`, `b_z (K,)`.
    xs: inputs [T, D].
    ys: integer labels [T], in [0, K) at the valid steps (see the module
      docstring for traced labels).
    h0: the initial hidden state [H].
    length: optional number of valid steps in [0, T]; later steps add no
      loss and their labels are ignored.
    checked: add `checkify` checks of traced labels and length (a Python
      bool; the caller must be wrapped in `checkify.checkify`).

  Returns:
    The summed cross-entropy, a scalar.

  Raises:
    TypeError: if `params` is not a dict or `checked` not a bool.
    ValueError: for missing or mis-shaped params, mismatched dims, non-integer
      labels, a concrete label outside [0, K), T = 0 or a bad length.
  """
  check_sequence(params, xs, ys, h0, length, checked)
  logits, _ = elman_logits(params, xs, h0, length=length)
  mask = step_mask(xs.shape[0], length, logits.dtype)
  return jnp.sum(mask * cross_entropy(logits, ys, mask))


def elman_bptt_full(params, xs, ys, h0, length):
  """The hand-written BPTT; returns (loss, grads, dL/dh0, h_last)."""
  num_steps = xs.shape[0]
  w_xh, w_hh, b_h = params["W_xh"], params["W_hh"], params["b_h"]
  w_hz = params["W_hz"]
  mask = step_mask(num_steps, length, xs.dtype)

  # Forward: h_t = m_t tanh(a_t) + (1 - m_t) h_{t-1}, storing h_{t-1}, h_t.
  def forward(h_prev, inputs):
    x, m = inputs
    h_new = jnp.tanh(w_xh @ x + w_hh @ h_prev + b_h)
    h = m * h_new + (1 - m) * h_prev
    return h, (h_prev, h)

  h_last, (h_prevs, hs) = jax.lax.scan(forward, h0, (xs, mask))
  logits = readout(params, hs)
  loss = jnp.sum(mask * cross_entropy(logits, ys, mask))

  # dL/do_t = z_t - onehot(y_t) for the softmax cross-entropy.
  labels, factor = safe_labels(ys, logits.shape[1], mask, logits.dtype)
  probs = jax.nn.softmax(logits, axis=1)
  onehot = jax.nn.one_hot(labels, logits.shape[1], dtype=logits.dtype)
  d_out = (mask * factor)[:, None] * (probs - onehot)  # [T, K]
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
  checked: bool = False,
) -> tuple[jax.Array, Params]:
  """`elman_loss` and its gradient by the hand-derived backward equations.

  A forward `lax.scan` stores h_{t-1} and h_t; a reverse `lax.scan` carries
  `dL/dh_{t+1} dh_{t+1}/dh_t = W_hh^T delta_{t+1}` back in time and adds the
  local term `W_hz^T (z_t - onehot(y_t))`; the weight gradients are the
  sums over t of outer products, taken as matrix products after the scan.
  No `jax.grad` is involved.

  Args:
    params: `W_xh (H, D)`, `W_hh (H, H)`, `b_h (H,)`, `W_hz (K, H)`, `b_z (K,)`.
    xs: inputs [T, D].
    ys: integer labels [T], in [0, K) at the valid steps.
    h0: the initial hidden state [H].
    length: optional number of valid steps.
    checked: as `elman_loss`.

  Returns:
    `(loss, grads)`, grads a dict shaped like `params` (NaN, with the loss,
    for a traced out-of-range label).

  Raises:
    TypeError, ValueError: as `elman_loss`.
  """
  check_sequence(params, xs, ys, h0, length, checked)
  loss, grads, _, _ = elman_bptt_full(params, xs, ys, h0, length)
  return loss, grads


def _check_batch(params, xs, ys, h0, lengths, checked) -> None:
  """Validates the batched arguments, labels and lengths included."""
  validation.check_flag(checked)
  if jnp.ndim(xs) != 3 or jnp.ndim(ys) != 2 or jnp.ndim(h0) != 2:
    raise ValueError(
      "batched Elman functions take xs [B, T, D], ys [B, T], h0 [B, H]; got "
      f"{jnp.shape(xs)}, {jnp.shape(ys)}, {jnp.shape(h0)}."
    )
  batch, num_steps = jnp.shape(xs)[:2]
  if jnp.shape(ys)[0] != batch or jnp.shape(h0)[0] != batch:
    raise ValueError(
      f"xs, ys and h0 must share the batch size {batch}, got "
      f"{jnp.shape(ys)[0]} and {jnp.shape(h0)[0]}."
    )
  hidden, dim, classes = validation.check_elman_params(params)
  validation.check_inputs(xs, h0, hidden, dim, batched=True)
  validation.check_target_shape(ys, (batch, num_steps), "[B, T]")
  if lengths is not None:
    validation.check_lengths("lengths", lengths, num_steps, (batch,))
  validation.check_label_values(ys, classes, lengths)
  if checked:
    validation.check_at_run_time(ys, classes, lengths, num_steps)


def elman_loss_batch(
  params: Params,
  xs: jax.Array,
  ys: jax.Array,
  h0: jax.Array,
  lengths: jax.Array | None = None,
  *,
  checked: bool = False,
) -> jax.Array:
  """The sum over a batch of `elman_loss` (vmapped), padded steps masked.

  Args:
    params: as `elman_loss`.
    xs: [B, T, D] inputs.
    ys: [B, T] integer labels, in [0, K) at the valid steps.
    h0: [B, H] initial states.
    lengths: optional [B] valid lengths, each in [0, T].
    checked: as `elman_loss` (labels and lengths checked once for the
      batch; a bad label is named by its index (b, t)).

  Returns:
    The scalar summed loss.

  Raises:
    TypeError, ValueError: as `elman_loss`, or for batch sizes that differ.
  """
  _check_batch(params, xs, ys, h0, lengths, checked)
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
  *,
  checked: bool = False,
) -> tuple[jax.Array, Params]:
  """`elman_bptt` vmapped over a batch; losses and gradients summed.

  Args:
    params: as `elman_loss`.
    xs: [B, T, D] inputs.
    ys: [B, T] integer labels, in [0, K) at the valid steps.
    h0: [B, H] initial states.
    lengths: optional [B] valid lengths, each in [0, T].
    checked: as `elman_loss_batch`.

  Returns:
    `(loss, grads)` summed over the batch.

  Raises:
    TypeError, ValueError: as `elman_loss_batch`.
  """
  _check_batch(params, xs, ys, h0, lengths, checked)
  if lengths is None:
    fn = lambda x, y, h: elman_bptt(params, x, y, h)
    losses, grads = jax.vmap(fn)(xs, ys, h0)
  else:
    fn = lambda x, y, h, n: elman_bptt(params, x, y, h, length=n)
    losses, grads = jax.vmap(fn)(xs, ys, h0, lengths)
  return jnp.sum(losses), jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)
