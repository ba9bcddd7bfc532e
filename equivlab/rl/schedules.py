"""When things happen in a DQN loop: epsilon, periods, targets, resets.

Pure functions of the env-step counter, so a jitted loop can call them at
every iteration: the linearly decayed exploration probability (Mnih et al.
2015), whether an iteration crossed a multiple of a period, and the target
network's hard (`optax.periodic_update`) or Polyak
(`optax.incremental_update`) update on such a crossing (rlax's
`examples/simple_dqn.py` style: target parameters as an explicit pytree).
"""

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from equivlab import checks
from equivlab.rl import tabular


def linear_epsilon(
  env_steps: chex.Numeric, start: float, end: float, decay_steps: int
) -> jax.Array:
  """Linearly decayed exploration probability (Mnih et al. 2015).

  `start + (end - start) * min(env_steps / decay_steps, 1)`.

  Args:
    env_steps: env steps taken so far, `[]`.
    start: epsilon at step 0, in `[0, 1]`.
    end: epsilon from `decay_steps` on, in `[0, 1]`.
    decay_steps: length of the decay, >= 1.

  Returns:
    float32 epsilon `[]`.

  Raises:
    TypeError: if `decay_steps` is not an int.
    ValueError: if `start` or `end` lies outside `[0, 1]`,
      `decay_steps < 1`, or concrete `env_steps` are negative.
  """
  tabular.check_epsilon(start, "epsilon_start")
  tabular.check_epsilon(end, "epsilon_end")
  checks.check_int("epsilon_decay_steps", decay_steps, minimum=1)
  if checks.is_concrete(env_steps) and np.any(np.asarray(env_steps) < 0):
    raise ValueError(f"env_steps must be >= 0, got {env_steps!r}.")
  fraction = jnp.minimum(jnp.asarray(env_steps, jnp.float32) / decay_steps, 1.0)
  return jnp.asarray(start + (end - start) * fraction, jnp.float32)


def crossed_boundary(
  steps_before: chex.Numeric, steps_after: chex.Numeric, period: int
) -> jax.Array:
  """Whether `(steps_before, steps_after]` contains a multiple of `period`.

  Args:
    steps_before: the counter before an iteration, `[]`.
    steps_after: the counter after it, `[]`.
    period: the period, >= 1.

  Returns:
    bool `[]`.

  Raises:
    TypeError, ValueError: if `period` is not an int >= 1.
  """
  checks.check_int("period", period, minimum=1)
  return steps_after // period > steps_before // period


def update_target(
  online_params: Any,
  target_params: Any,
  steps_before: chex.Numeric,
  steps_after: chex.Numeric,
  period: int,
  mode: str = "hard",
  tau: float = 1.0,
) -> Any:
  """Updates the target network when an iteration crosses a period boundary.

  "hard" copies the online parameters with `optax.periodic_update`, which
  fires when its `steps % update_period == 0`: it is handed 0 exactly when
  a boundary was crossed (and 1 otherwise, with `update_period = 2`), so
  the copy happens once per crossing whatever the step increment. "polyak"
  applies `optax.incremental_update` with step size `tau` on a crossing and
  0 otherwise (which leaves the target exactly as it was).

  Args:
    online_params: the online network's parameters.
    target_params: the target network's parameters.
    steps_before: the env-step counter before the iteration, `[]`.
    steps_after: the counter after it, `[]`.
    period: env steps between updates, >= 1.
    mode: "hard" or "polyak".
    tau: the Polyak step size in `(0, 1]`.

  Returns:
    The new target parameters.

  Raises:
    ValueError: for a period < 1, an unknown mode, or tau outside (0, 1].
  """
  if not isinstance(period, int) or period < 1:
    raise ValueError(f"target_period must be an integer >= 1, got {period!r}.")
  crossed = crossed_boundary(steps_before, steps_after, period)
  if mode == "hard":
    return optax.periodic_update(
      online_params,
      target_params,
      steps=jnp.where(crossed, 0, 1),
      update_period=2,
    )
  if mode == "polyak":
    if not 0.0 < tau <= 1.0:
      raise ValueError(f"tau must lie in (0, 1], got {tau}.")
    step_size = jnp.where(crossed, jnp.float32(tau), jnp.float32(0.0))
    return optax.incremental_update(online_params, target_params, step_size)
  raise ValueError(f"target_update must be 'hard' or 'polyak', got {mode!r}.")


def reset_block(num_iterations: int) -> int:
  """Iterations whose resets `train_then_evaluate` computes in one call.

  The largest divisor of `num_iterations` up to 32 that leaves at least
  two blocks (1 if none). XLA:CPU runs each random draw as a loop of its
  own, so resets drawn for a block at once cost fewer operations than
  one draw per iteration. At least two blocks keep the blocks a loop in
  every program, whose float arithmetic XLA then fuses alike: resets
  computed at the top level of a program round otherwise than inside a
  loop, and a one-period chunk would not give the bits of a whole run.

  Args:
    num_iterations: iterations in an evaluation period, >= 1.

  Returns:
    The block length, a divisor of `num_iterations`.

  Raises:
    TypeError, ValueError: if `num_iterations` is not an int >= 1.
  """
  checks.check_int("num_iterations", num_iterations, minimum=1)
  for block in range(min(32, num_iterations // 2), 1, -1):
    if num_iterations % block == 0:
      return block
  return 1
