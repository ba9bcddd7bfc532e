"""Linear action values and semi-gradient Q-learning with target weights.

`q(s, a; w) = w . phi(s, a)`, regressed on the target `r + gamma max_a'
q(s', a'; w-)` built from frozen weights `w-`. With the squared error
`J(w) = (r + gamma max_a' q(s', a'; w-) - q(s, a; w))^2` the semi-gradient
is `-2 delta phi(s, a)` and the step is `w' = w - alpha grad J` (seed 000
3(b)).
"""

import chex
import jax
import jax.numpy as jnp

from equivlab.rl import value_learning

Array = chex.Array
Numeric = chex.Numeric

# Seed 000 3(b): the chain's actions are the moves -1 and +1.
CHAIN_ACTIONS = (-1.0, 1.0)


def chain_features(s: Numeric, a: Numeric) -> Array:
  """Seed 000 3(b)'s features `phi(s, a) = [s, a, 1]`, `[3]`.

  Args:
    s: the state (a position on the chain), `[]`.
    a: the move, -1 or +1, `[]`.

  Returns:
    The feature vector, float32 `[3]`.
  """
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
  """
  return jnp.stack([chain_features(s, a) for a in actions])


def q_values(w: Array, phi: Array) -> Array:
  """Linear action values `phi @ w`.

  Args:
    w: weights, `[F]`.
    phi: features, `[F]` for one pair or `[A, F]` for every action.

  Returns:
    `[]` or `[A]` values.
  """
  chex.assert_rank(w, 1)
  return phi @ w


def semi_gradient_loss(
  w: Array,
  w_target: Array,
  phi_tm1: Array,
  r_t: Numeric,
  discount_t: Numeric,
  phi_t: Array,
) -> Array:
  """Seed 000 3(b)'s squared TD error `J(w)` against frozen weights `w-`.

  Args:
    w: online weights, `[F]`.
    w_target: frozen target weights `w-`, `[F]`.
    phi_tm1: features of the pair `(s, a)` taken, `[F]`.
    r_t: the reward, `[]`.
    discount_t: `gamma`, or 0 if the next state is terminal, `[]`.
    phi_t: features of the next state with every action, `[A, F]`.

  Returns:
    `(r + discount max_a' w- . phi(s', a') - w . phi(s, a))^2`, `[]`.
  """
  chex.assert_rank([w, w_target, phi_tm1, phi_t], [1, 1, 1, 2])
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
  """One semi-gradient step `w' = w - alpha grad_w J(w)` (seed 000 3(b)).

  The gradient flows only through `q(s, a; w)`; the target uses `w-`.

  Args:
    w: online weights, `[F]`.
    w_target: frozen target weights, `[F]`.
    phi_tm1: features of the pair taken, `[F]`.
    r_t: the reward, `[]`.
    discount_t: `gamma`, or 0 at termination, `[]`.
    phi_t: next-state features for every action, `[A, F]`.
    alpha: the step size, `[]`.

  Returns:
    `(w', grad_w J(w))`, each `[F]`.
  """
  grad = jax.grad(semi_gradient_loss)(
    w, w_target, phi_tm1, r_t, discount_t, phi_t
  )
  return w - alpha * grad, grad
