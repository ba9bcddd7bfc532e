"""Truncated backpropagation through time (Williams & Peng 1990).

A sequence of T steps is cut into T / tau segments. The forward state
crosses every boundary; the gradient does not (`stop_gradient` on the
segment's initial carry), so memory and compute per segment are O(tau).
`tbptt_grads` sums the segment gradients at fixed parameters,
`tbptt_train` updates once per segment, `elman_tbptt` runs the Elman
network's hand-written backward pass on each segment.

`tbptt_grads` and `tbptt_train` check their arguments eagerly, then run a
program jitted internally with `segment_loss`, `optimizer` and `tau`
static: eager calls compile once per shape (and per `segment_loss` and
`optimizer` object: build those once, not per call). Inside a caller's
own `jit` they trace as usual.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from equivlab import checks
from equivlab.rnn import bptt, validation
from equivlab.rnn.cells import Params, PyTree, elman_cell
from equivlab.rnn.scan import unroll

SegmentLoss = Callable[..., tuple[jax.Array, PyTree]]


def _segments(tree: PyTree, tau: int, num_steps: int) -> PyTree:
  """Reshapes leading-axis-T leaves to [T // tau, tau, ...]."""
  return jax.tree.map(
    lambda a: a.reshape((num_steps // tau, tau) + a.shape[1:]), tree
  )


def _check_tau(tau: Any, num_steps: int) -> None:
  """Raises unless tau is an int >= 1 that divides T > 0."""
  checks.check_int("tau", tau, minimum=1)
  if num_steps == 0 or num_steps % tau:
    raise ValueError(
      f"T must be a positive multiple of tau = {tau}, got T = {num_steps}."
    )


def _check_long_sequence(segment_loss: Any, xs: Any, ys: Any, tau: Any) -> int:
  """Validates the arguments shared by `tbptt_grads` and `tbptt_train`."""
  if not callable(segment_loss):
    raise TypeError(
      "segment_loss must be a callable (params, xs, ys, carry) -> (loss, "
      f"carry), got {type(segment_loss).__name__}."
    )
  if not jnp.ndim(xs):
    raise ValueError(f"xs must be [T, ...], got shape {jnp.shape(xs)}.")
  num_steps = jnp.shape(xs)[0]
  for leaf in jax.tree.leaves(ys):
    if jnp.shape(leaf)[:1] != (num_steps,):
      raise ValueError(
        f"ys must have the leading T = {num_steps} of xs, got a leaf of "
        f"shape {jnp.shape(leaf)}."
      )
  _check_tau(tau, num_steps)
  return num_steps


def tbptt_grads(
  segment_loss: SegmentLoss,
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
  With tau = T this is the full BPTT gradient. Compiled once per shape
  (see the module docstring).

  `segment_loss` sees traced segments, so it cannot check label values:
  with `elman_segment_loss` an out-of-range label makes the loss NaN. Check
  labels before (`equivlab.checks.check_labels`) or use `elman_tbptt`.

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
    TypeError: if `segment_loss` is not callable or tau not an int.
    ValueError: if tau is not a positive divisor of T, or ys' T differs.
  """
  _check_long_sequence(segment_loss, xs, ys, tau)
  if not _hashable(segment_loss):
    return _grads(segment_loss, params, xs, ys, carry0, tau)
  return _grads_jit(segment_loss, params, xs, ys, carry0, tau)


def _hashable(*statics: Any) -> bool:
  """Whether the static arguments can key jit's cache."""
  try:
    hash(statics)
  except TypeError:
    return False
  return True


def _grads(segment_loss, params, xs, ys, carry0, tau):
  """`tbptt_grads` after its checks."""
  num_steps = jnp.shape(xs)[0]
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


_grads_jit = jax.jit(_grads, static_argnums=(0, 5))


def tbptt_train(
  segment_loss: SegmentLoss,
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
  costs O(tau) memory and compute, not O(T). Compiled once per shape
  (see the module docstring).

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
    TypeError: as `tbptt_grads`, or if `optimizer` has no `update`.
    ValueError: as `tbptt_grads`.
  """
  if not callable(getattr(optimizer, "update", None)):
    raise TypeError(
      "optimizer must be an optax.GradientTransformation (with an update "
      f"method), got {type(optimizer).__name__}."
    )
  _check_long_sequence(segment_loss, xs, ys, tau)
  args = (segment_loss, optimizer, params, opt_state, xs, ys, carry0, tau)
  if not _hashable(segment_loss, optimizer):
    return _train(*args)
  return _train_jit(*args)


def _train(segment_loss, optimizer, params, opt_state, xs, ys, carry0, tau):
  """`tbptt_train` after its checks."""
  num_steps = jnp.shape(xs)[0]
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


_train_jit = jax.jit(_train, static_argnums=(0, 1, 7))


def elman_segment_loss(
  params: Params, xs: jax.Array, ys: jax.Array, h0: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """`elman_loss` on a segment, also returning the last hidden state.

  The segment loss for `tbptt_grads` / `tbptt_train`, which pass it traced
  segments: there an out-of-range label makes the loss NaN.

  Args:
    params: as `elman_loss`.
    xs: [tau, D] or, batched, [tau, B, D] (time-major).
    ys: [tau] or [tau, B] integer labels, in [0, K).
    h0: [H] or [B, H].

  Returns:
    `(summed loss, h_last)`.

  Raises:
    TypeError, ValueError: as `elman_loss` (concrete labels are checked).
  """
  hidden, _, classes = validation.check_elman_params(params)
  validation.check_target_shape(ys, jnp.shape(xs)[:-1], "xs.shape[:-1]")
  if jnp.shape(h0)[-1:] != (hidden,):
    raise ValueError(f"h0 must end in H = {hidden}, got {jnp.shape(h0)}.")
  validation.check_label_values(ys, classes)
  h_last, hs = unroll(elman_cell, params, xs, h0)
  logits = bptt.readout(params, hs)
  flat = logits.reshape(-1, logits.shape[-1])
  return jnp.sum(bptt.cross_entropy(flat, ys.reshape(-1))), h_last


def elman_tbptt(
  params: Params,
  xs: jax.Array,
  ys: jax.Array,
  h0: jax.Array,
  tau: int,
  *,
  checked: bool = False,
) -> tuple[jax.Array, Params]:
  """Truncated BPTT of the Elman network with the hand-written backward pass.

  Runs `elman_bptt` on each segment from the (constant) state reached by
  the forward pass, and sums the segment gradients.

  Args:
    params: as `elman_loss`.
    xs: [T, D] inputs, T a multiple of tau.
    ys: [T] integer labels, in [0, K).
    h0: [H] initial state.
    tau: the segment length (static under jit).
    checked: as `elman_loss`.

  Returns:
    `(loss, grads)`.

  Raises:
    TypeError: as `elman_loss`, or if tau is not an int.
    ValueError: as `elman_loss`, or if tau does not divide T.
  """
  bptt.check_sequence(params, xs, ys, h0, None, checked)
  _check_tau(tau, xs.shape[0])

  def body(acc, segment):
    loss_acc, grad_acc, h = acc
    x, y = segment
    loss, grads, _, h = bptt.elman_bptt_full(params, x, y, h, None)
    return (loss_acc + loss, jax.tree.map(jnp.add, grad_acc, grads), h), None

  zero = jax.tree.map(jnp.zeros_like, params)
  loss0 = jnp.zeros((), xs.dtype)
  (loss, grads, _), _ = jax.lax.scan(
    body,
    (loss0, zero, h0),
    (_segments(xs, tau, xs.shape[0]), _segments(ys, tau, xs.shape[0])),
  )
  return loss, grads
