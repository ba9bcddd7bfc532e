"""Temporal-difference errors, regression losses and n-step returns.

Per-transition functions in the rlax style (batch them with `jax.vmap` at the
call site): TD functions return the TD error, losses are separate. Argument
names carry time suffixes: `q_tm1` are the action values at the state where
`a_tm1` was taken, `r_t` and `discount_t` come with the next state, whose
action values are `q_t`.

The action index `a_tm1` and the discount are checked when concrete
(`rl.validation`); inside `jit` or `vmap` they are not, and an index out of
range is clamped by XLA.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks
from equivlab.rl import validation

Array = chex.Array
Numeric = chex.Numeric


def _check_transition(q_tm1: Array, a_tm1: Numeric, discount_t: Numeric):
  """The action indexes `q_tm1`; the discount lies in `[0, 1]`.

  Raises:
    ValueError: (when concrete) naming the argument out of its range.
  """
  validation.check_index("a_tm1", a_tm1, q_tm1.shape[0], "actions")
  validation.check_probability("discount_t", discount_t)


def _maybe_stop_gradient(x: Array, stop_target_gradients: bool) -> Array:
  return jax.lax.stop_gradient(x) if stop_target_gradients else x


def q_learning(
  q_tm1: Array,
  a_tm1: Numeric,
  r_t: Numeric,
  discount_t: Numeric,
  q_t: Array,
  stop_target_gradients: bool = True,
) -> Array:
  """Q-learning TD error `r_t + discount_t * max_a q_t[a] - q_tm1[a_tm1]`.

  Watkins (1989); Sutton & Barto (2018) eq. 6.8.

  Args:
    q_tm1: action values at the state where `a_tm1` was taken, `[A]`.
    a_tm1: the action taken, an integer scalar `[]`.
    r_t: the reward that followed, `[]`.
    discount_t: the discount of the next state, `[]` (0 at termination).
    q_t: action values at the next state, `[A]`.
    stop_target_gradients: whether the target is held constant under `grad`.

  Returns:
    The TD error, a scalar `[]`.

  Raises:
    ValueError: (when concrete) for `a_tm1` outside `[0, A)` or a discount
      outside `[0, 1]`.
  """
  chex.assert_rank([q_tm1, a_tm1, r_t, discount_t, q_t], [1, 0, 0, 0, 1])
  chex.assert_type(
    [q_tm1, a_tm1, r_t, discount_t, q_t], [float, int, float, float, float]
  )
  _check_transition(q_tm1, a_tm1, discount_t)
  target_tm1 = r_t + discount_t * jnp.max(q_t)
  target_tm1 = _maybe_stop_gradient(target_tm1, stop_target_gradients)
  return target_tm1 - q_tm1[a_tm1]


def double_q_learning(
  q_tm1: Array,
  a_tm1: Numeric,
  r_t: Numeric,
  discount_t: Numeric,
  q_t_value: Array,
  q_t_selector: Array,
  stop_target_gradients: bool = True,
) -> Array:
  """Double Q-learning TD error: one network selects, the other evaluates.

  The next action is `argmax_a q_t_selector[a]` and it is valued with
  `q_t_value`; the target is NOT `max_a q_t_value[a]`. van Hasselt (2010);
  van Hasselt, Guez & Silver (2016).

  Args:
    q_tm1: action values at the state where `a_tm1` was taken, `[A]`.
    a_tm1: the action taken, an integer scalar `[]`.
    r_t: the reward that followed, `[]`.
    discount_t: the discount of the next state, `[]` (0 at termination).
    q_t_value: next-state values used to evaluate the action, `[A]`
      (the target network in double DQN).
    q_t_selector: next-state values used to select the action, `[A]`
      (the online network in double DQN).
    stop_target_gradients: whether the target is held constant under `grad`.

  Returns:
    The TD error, a scalar `[]`.

  Raises:
    ValueError: as `q_learning`.
  """
  chex.assert_rank(
    [q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector],
    [1, 0, 0, 0, 1, 1],
  )
  chex.assert_type(
    [q_tm1, a_tm1, r_t, discount_t, q_t_value, q_t_selector],
    [float, int, float, float, float, float],
  )
  chex.assert_equal_shape([q_t_value, q_t_selector])
  _check_transition(q_tm1, a_tm1, discount_t)
  a_t = jnp.argmax(q_t_selector)
  target_tm1 = r_t + discount_t * q_t_value[a_t]
  target_tm1 = _maybe_stop_gradient(target_tm1, stop_target_gradients)
  return target_tm1 - q_tm1[a_tm1]


def huber_loss(x: Array, delta: float = 1.0) -> Array:
  """Huber loss: quadratic within `[-delta, delta]`, linear outside.

  `0.5 x^2` for `|x| <= delta`, else `0.5 delta^2 + delta (|x| - delta)`;
  its gradient is the TD error clipped to `[-delta, delta]` (Mnih et al.,
  2015). Matches `rlax.huber_loss`.

  Args:
    x: errors of any shape `[...]`.
    delta: the threshold between the quadratic and linear parts, > 0.

  Returns:
    Elementwise losses, `[...]`.

  Raises:
    ValueError: if `delta` is not positive.
  """
  if checks.is_concrete(delta) and not (
    np.ndim(delta) == 0 and np.isfinite(delta) and delta > 0
  ):
    raise ValueError(f"huber_loss expects a finite delta > 0, got {delta}.")
  abs_x = jnp.abs(x)
  quadratic = jnp.minimum(abs_x, delta)
  # The split keeps the gradient exactly `clip(x, -delta, delta)`.
  linear = abs_x - quadratic
  return 0.5 * quadratic**2 + delta * linear


def l2_loss(predictions: Array, targets: Array | None = None) -> Array:
  """Half squared error `0.5 (predictions - targets)^2`, as `rlax.l2_loss`.

  Args:
    predictions: values of any shape `[...]` (or TD errors if `targets` is
      None).
    targets: values of the same shape, or None for zeros.

  Returns:
    Elementwise losses, `[...]`.
  """
  if targets is not None:
    chex.assert_equal_shape([predictions, targets])
    predictions = predictions - targets
  return 0.5 * predictions**2


def n_step_bootstrapped_returns(
  r_t: Array,
  discount_t: Array,
  v_t: Array,
  n: int,
  stop_target_gradients: bool = False,
) -> Array:
  """Strided n-step returns over a sequence, as in rlax (lambda = 1).

  `G_t = r_{t+1} + d_{t+1} (r_{t+2} + d_{t+2} (... (r_{t+n} + d_{t+n}
  v_{t+n})))`, truncated at the end of the sequence, where the last value
  `v_T` bootstraps the remaining steps. Sutton & Barto (2018) eq. 7.1.

  Args:
    r_t: rewards at times `1..T`, `[T]`.
    discount_t: discounts at times `1..T`, `[T]` (0 where an episode ended).
    v_t: values to bootstrap from at times `1..T`, `[T]`.
    n: number of rewards to accumulate before bootstrapping, >= 1.
    stop_target_gradients: whether the returns are held constant.

  Returns:
    The returns at times `0..T-1`, `[T]`.

  Raises:
    ValueError: if `n` is not a positive integer.
  """
  if not isinstance(n, int) or isinstance(n, bool) or n < 1:
    raise ValueError(f"n_step_bootstrapped_returns expects n >= 1, got {n!r}.")
  chex.assert_rank([r_t, discount_t, v_t], 1)
  chex.assert_equal_shape([r_t, discount_t, v_t])
  validation.check_probability("discount_t", discount_t)
  seq_len = r_t.shape[0]
  # Pad with n - 1 zero rewards and unit discounts, bootstrapping from v_T.
  pad = n - 1
  r_pad = jnp.concatenate([r_t, jnp.zeros((pad,), r_t.dtype)])
  d_pad = jnp.concatenate([discount_t, jnp.ones((pad,), discount_t.dtype)])
  v_pad = jnp.concatenate([v_t, jnp.full((pad,), v_t[-1], v_t.dtype)])
  returns = v_pad[n - 1 : n - 1 + seq_len]
  for i in reversed(range(n)):
    returns = r_pad[i : i + seq_len] + d_pad[i : i + seq_len] * returns
  return _maybe_stop_gradient(returns, stop_target_gradients)
