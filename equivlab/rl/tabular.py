"""Tabular Q-learning and epsilon-greedy action selection.

The update is Watkins' Q-learning, `Q(s, a) <- Q(s, a) + alpha (r + gamma
max_a' Q(s', a') - Q(s, a))` (Sutton & Barto 2018, eq. 6.8); the policy is
epsilon-greedy: a uniformly random action with probability epsilon, the
greedy one otherwise (Sutton & Barto 2018, section 2.2).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks
from equivlab.rl import keys as keys_lib
from equivlab.rl import validation, value_learning

Array = chex.Array
Numeric = chex.Numeric


def check_epsilon(epsilon: Numeric, name: str = "epsilon") -> None:
  """Raises ValueError when a concrete epsilon lies outside `[0, 1]`.

  Traced values cannot be checked at trace time and pass through.

  Args:
    epsilon: an exploration probability, `[]`.
    name: how to call it in the message.

  Raises:
    ValueError: if `epsilon` is concrete and not in `[0, 1]`.
  """
  if isinstance(epsilon, jax.core.Tracer):
    return
  values = np.asarray(epsilon, dtype=np.float64)
  if not np.all((values >= 0) & (values <= 1)):
    raise ValueError(f"{name} must lie in [0, 1], got {epsilon!r}.")


def q_learning_update(
  q_table: Array,
  s_tm1: Numeric,
  a_tm1: Numeric,
  r_t: Numeric,
  discount_t: Numeric,
  s_t: Numeric,
  alpha: Numeric,
) -> Array:
  """One tabular Q-learning update of the entry `(s_tm1, a_tm1)`.

  Sutton & Barto (2018) eq. 6.8.

  Args:
    q_table: action values, `[S, A]`.
    s_tm1: index of the state where the action was taken, `[]` int.
    a_tm1: index of the action taken, `[]` int.
    r_t: the reward, `[]`.
    discount_t: `gamma`, or 0 if `s_t` is terminal, `[]`.
    s_t: index of the next state, `[]` int.
    alpha: the step size in `(0, 1]`, `[]`.

  Returns:
    The updated table, `[S, A]`.

  Raises:
    TypeError: for a state or action index that is not an integer, or a
      table that is not of a floating-point dtype.
    ValueError: for a table that is not `[S, A]`, and (when concrete) a
      state outside `[0, S)`, an action outside `[0, A)`, a discount
      outside `[0, 1]` or a step size outside `(0, 1]`.
  """
  if jnp.ndim(q_table) != 2:
    raise ValueError(f"q_table must be [S, A], got shape {jnp.shape(q_table)}.")
  checks.check_floating("q_table", q_table)
  num_states, num_actions = jnp.shape(q_table)
  validation.check_index("s_tm1", s_tm1, num_states, "states")
  validation.check_index("s_t", s_t, num_states, "states")
  validation.check_index("a_tm1", a_tm1, num_actions, "actions")
  validation.check_probability("discount_t", discount_t)
  validation.check_step_size("alpha", alpha, maximum=1.0)
  r_t = jnp.asarray(r_t, q_table.dtype)
  discount_t = jnp.asarray(discount_t, q_table.dtype)
  td = value_learning.q_learning(
    q_table[s_tm1], jnp.asarray(a_tm1), r_t, discount_t, q_table[s_t]
  )
  return q_table.at[s_tm1, a_tm1].add(alpha * td)


def epsilon_greedy(key: chex.PRNGKey, q_values: Array, epsilon: Numeric):
  """Samples an action: uniform with probability epsilon, else greedy.

  Ties between greedy actions go to the lowest index.

  Args:
    key: a PRNG key.
    q_values: action values, `[A]`.
    epsilon: the exploration probability in `[0, 1]`, `[]`.

  Returns:
    The action index, an int32 scalar `[]`.

  Raises:
    ValueError: if `epsilon` is concrete and outside `[0, 1]`, or `key` is
      not one PRNG key.
  """
  keys_lib.check_key(key)
  check_epsilon(epsilon)
  chex.assert_rank(q_values, 1)
  explore_key, action_key = jax.random.split(key)
  random_action = jax.random.randint(action_key, (), 0, q_values.shape[0])
  explore = jax.random.uniform(explore_key)
  return epsilon_greedy_from_draws(q_values, epsilon, explore, random_action)


def epsilon_greedy_from_draws(
  q_values: Array,
  epsilon: Numeric,
  explore: Numeric,
  random_action: Numeric,
) -> jax.Array:
  """`epsilon_greedy` with its two random draws made by the caller.

  For loops that draw their random numbers in bulk (`rl.noise`): given the
  same draws, the same action as `epsilon_greedy`.

  Args:
    q_values: action values, `[A]`.
    epsilon: the exploration probability in `[0, 1]`, `[]`.
    explore: a uniform draw in `[0, 1)`; the action is random when it is
      below `epsilon`, `[]`.
    random_action: a uniform draw of an action index in `[0, A)`, `[]`.

  Returns:
    The action index, an int32 scalar `[]`.

  Raises:
    ValueError: if, concrete, `epsilon` lies outside `[0, 1]`, `explore`
      outside `[0, 1)` or `random_action` outside `[0, A)`.
  """
  check_epsilon(epsilon)
  chex.assert_rank(q_values, 1)
  validation.check_probability("explore", explore, include_one=False)
  validation.check_index(
    "random_action", random_action, q_values.shape[0], "actions"
  )
  greedy_action = jnp.argmax(q_values)
  return jnp.where(explore < epsilon, random_action, greedy_action).astype(
    jnp.int32
  )


def epsilon_greedy_probs(q_values: Array, epsilon: Numeric) -> Array:
  """The action probabilities of `epsilon_greedy`, `[A]`.

  Args:
    q_values: action values, `[A]`.
    epsilon: the exploration probability in `[0, 1]`, `[]`.

  Returns:
    `epsilon / A` on every action plus `1 - epsilon` on the greedy one.

  Raises:
    ValueError: if `epsilon` is concrete and outside `[0, 1]`.
  """
  check_epsilon(epsilon)
  chex.assert_rank(q_values, 1)
  num_actions = q_values.shape[0]
  greedy = jax.nn.one_hot(jnp.argmax(q_values), num_actions)
  return epsilon / num_actions + (1.0 - epsilon) * greedy
