"""What a DQN run records, per iteration and per evaluation, and its checks.

`dqn.make_loop`'s `run_periods` returns metrics per evaluation period
(leaves `[P, I/P]`); `flatten_metrics` lays them out per iteration as
`dqn.make_train` returns them and adds "diverged". `raise_if_diverged`
turns a non-finite loss or acting Q-value into a `FloatingPointError`
naming the seed and the first bad env step.
"""

import jax.numpy as jnp
import numpy as np


def flatten_metrics(metrics: dict) -> dict:
  """Per-period metrics of `run_periods` as `make_train` returns them.

  Args:
    metrics: leaves `[P, I/P]` per iteration and `[P]` per evaluation (one
      seed; `jax.vmap` it for many).

  Returns:
    Leaves `[I]` and `[P]`, and "diverged" `[]`.
  """
  flat = {
    name: value.reshape((-1,))
    for name, value in metrics.items()
    if name not in ("eval_return", "eval_env_steps")
  }
  flat["eval_return"] = metrics["eval_return"]
  flat["eval_env_steps"] = metrics["eval_env_steps"]
  flat["diverged"] = ~jnp.all(flat["finite"])
  return flat


def raise_if_diverged(metrics: dict) -> None:
  """Raises if any iteration of a run (or of any seed) was not finite.

  Args:
    metrics: `train(key)["metrics"]`, for one seed (`[I]` leaves) or many
      (`[S, I]`, from `vmap`).

  Raises:
    FloatingPointError: naming the seed index, the iteration and the env
      steps at which a loss or an acting Q-value first was NaN or infinite.
  """
  finite = np.asarray(metrics["finite"])
  if finite.all():
    return
  per_seed = finite.reshape((-1, finite.shape[-1]))
  eval_steps = np.asarray(metrics["eval_env_steps"]).reshape((-1,))
  num_evals = np.asarray(metrics["eval_return"]).shape[-1]
  num_envs = int(eval_steps[0]) * num_evals // per_seed.shape[1]
  seeds = np.nonzero(~per_seed.all(axis=1))[0]
  first = int(np.argmin(per_seed[seeds[0]]))
  raise FloatingPointError(
    f"DQN training diverged: a non-finite loss or Q-value in seed index "
    f"{int(seeds[0])} at iteration {first} (env steps {first * num_envs}); "
    f"{len(seeds)} of {per_seed.shape[0]} seed(s) affected. Lower "
    "learning_rate or set max_grad_norm."
  )
