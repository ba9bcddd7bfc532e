"""A gradient-flow probe: how `dL_T / dh_t` decays back in time."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from equivlab.rnn.cells import CellFn, LSTMState, Params, PyTree


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
  geometric decay in T - t (Bengio, Simard & Frasconi 1994).

  Args:
    cell_fn: `(params, carry, x) -> (carry, output)`.
    params: the cell's parameters (plus whatever `final_loss` closes over).
    xs: [T, D] one sequence.
    carry0: its initial carry.
    final_loss: a scalar function of the last output [H].

  Returns:
    [T] norms; entry t is the norm of the gradient with respect to the
    carry after step t (0-based), so entry T-1 is the direct one.

  Raises:
    TypeError: if `cell_fn` or `final_loss` is not callable.
    ValueError: if xs is not [T, D] with T > 0.
  """
  for name, fn in (("cell_fn", cell_fn), ("final_loss", final_loss)):
    if not callable(fn):
      raise TypeError(f"{name} must be callable, got {type(fn).__name__}.")
  num_steps = jnp.shape(xs)[0] if jnp.ndim(xs) else 0
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
