"""Linear action values and semi-gradient Q-learning with target weights.

`q(s, a; w) = w . phi(s, a)`, regressed on the target `r + gamma max_a'
q(s', a'; w-)` built from frozen weights `w-`. With the squared error
`J(w) = (r + gamma max_a' q(s', a'; w-) - q(s, a; w))^2` the semi-gradient
is `-2 delta phi(s, a)` and the step is `w' = w - alpha grad J` (Sutton &
Barto 2018, section 10.1, with frozen target weights as in Mnih et al.
2015).

Shapes are checked always; action values, discounts and step sizes when
concrete (`rl.validation`).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks
from equivlab.rl import validation, value_learning

Array = chex.Array
Numeric = chex.Numeric

# The chain's actions are the moves -1 and +1.
CHAIN_ACTIONS = (-1.0, 1.0)


def chain_features(s: Numeric, a: Numeric) -> Array:
  """The chain's features `phi(s, a) = [s, a, 1]`, `[3]`.

  Args:
    s: the state (a position on the chain), `[]`.
    a: the move, -1 or +1, `[]`.

  Returns:
    The feature vector, float32 `[3]`.

  Raises:
    ValueError: for a concrete move other than -1 or +1, or a state or
      move that is not a scalar.
  """
  if jnp.ndim(s) or jnp.ndim(a):
    raise ValueError(
      f"s and a must be scalars [], got shapes {jnp.shape(s)} and "
      f"{jnp.shape(a)}."
    )
  _check_moves("a", a, CHAIN_ACTIONS)
  return jnp.stack(
    [jnp.asarray(s, jnp.float32), jnp.asarray(a, jnp.float32), 1.0]
  )


def all_action_features(s: Numeric, actions=CHAIN_ACTIONS) -> Array:
  """Features of one state paired with every action, `[A, 3]`.

  Args:
    s: the state, `[]`.
    actions: the action values, a sequence of length A.

  Returns:
    `phi(s, a)` for each action in order, `[A, 3]`.

  Raises:
    ValueError: for no actions, or as `chain_features`.
  """
  if not len(actions):
    raise ValueError("actions must hold at least one move, got none.")
  return jnp.stack([chain_features(s, a) for a in actions])


def q_values(w: Array, phi: Array) -> Array:
  """Linear action values `phi @ w`.

  Args:
    w: weights, `[F]`.
    phi: features, `[F]` for one pair or `[A, F]` for every action.

  Returns:
    `[]` or `[A]` values.

  Raises:
    ValueError: for `w` not `[F]` or `phi` not `[F]` / `[A, F]`.
  """
  _check_features("phi", w, phi, (1, 2))
  return phi @ w


def _check_moves(name, a, moves) -> None:
  """A concrete move is one of `moves`."""
  if not checks.is_concrete(a):
    return
  if not np.issubdtype(np.asarray(a).dtype, np.number):
    raise TypeError(f"{name} must be one of the moves {moves}, got {a!r}.")
  if float(np.asarray(a)) not in moves:
    raise ValueError(f"{name} must be one of the moves {moves}, got {a!r}.")


def _check_features(name, w, phi, ranks) -> None:
  """`w` is `[F]` and `phi` of a rank in `ranks` ends in `F`."""
  if jnp.ndim(w) != 1:
    raise ValueError(f"w must be weights [F], got shape {jnp.shape(w)}.")
  width = jnp.shape(w)[0]
  if jnp.ndim(phi) not in ranks or jnp.shape(phi)[-1] != width:
    layout = " or ".join("[F]" if r == 1 else "[A, F]" for r in ranks)
    raise ValueError(
      f"{name} must be features {layout} with F = {width} (the width of "
      f"w), got shape {jnp.shape(phi)}."
    )


def semi_gradient_loss(
  w: Array,
  w_target: Array,
  phi_tm1: Array,
  r_t: Numeric,
  discount_t: Numeric,
  phi_t: Array,
) -> Array:
  """The squared TD error `J(w)` against frozen weights `w-`.

  Args:
    w: online weights, `[F]`.
    w_target: frozen target weights `w-`, `[F]`.
    phi_tm1: features of the pair `(s, a)` taken, `[F]`.
    r_t: the reward, `[]`.
    discount_t: `gamma`, or 0 if the next state is terminal, `[]`.
    phi_t: features of the next state with every action, `[A, F]`.

  Returns:
    `(r + discount max_a' w- . phi(s', a') - w . phi(s, a))^2`, `[]`.

  Raises:
    ValueError: for shapes other than those above (one `F` throughout), or
      a concrete discount outside `[0, 1]`.
  """
  if jnp.shape(w_target) != jnp.shape(w):
    raise ValueError(
      f"w_target must have the shape of w {jnp.shape(w)}, got "
      f"{jnp.shape(w_target)}."
    )
  _check_features("phi_tm1", w, phi_tm1, (1,))
  _check_features("phi_t", w, phi_t, (2,))
  validation.check_probability("discount_t", discount_t)
  q_tm1 = q_values(w, phi_tm1)[None]
  q_t = q_values(w_target, phi_t)
  td = value_learning.q_learning(
    q_tm1,
    jnp.asarray(0),
    jnp.asarray(r_t, q_tm1.dtype),
    jnp.asarray(discount_t, q_tm1.dtype),
    q_t,
  )
  return td**2


def semi_gradient_q_learning_update(
  w: Array,
  w_target: Array,
  phi_tm1: Array,
  r_t: Numeric,
  discount_t: Numeric,
  phi_t: Array,
  alpha: Numeric,
) -> tuple[Array, Array]:
  """One semi-gradient step `w' = w - alpha grad_w J(w)`.

  The gradient flows only through `q(s, a; w)`; the target uses `w-`.

  Args:
    w: online weights, `[F]`.
    w_target: frozen target weights, `[F]`.
    phi_tm1: features of the pair taken, `[F]`.
    r_t: the reward, `[]`.
    discount_t: `gamma`, or 0 at termination, `[]`.
    phi_t: next-state features for every action, `[A, F]`.
    alpha: the step size, > 0, `[]`.

  Returns:
    `(w', grad_w J(w))`, each `[F]`.

  Raises:
    ValueError: as `semi_gradient_loss`, or for a concrete step size that
      is not finite and > 0.
  """
  validation.check_step_size("alpha", alpha)
  grad = jax.grad(semi_gradient_loss)(
    w, w_target, phi_tm1, r_t, discount_t, phi_t
  )
  return w - alpha * grad, grad
