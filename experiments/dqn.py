r"""DQN on CartPole-v1 (or any discrete gymnax env, or the chain MDP).

Trains `--num_seeds` independent agents at once with
`jax.jit(jax.vmap(train))(keys)` (the seed axis sharded over devices when
their count divides it) and writes to `--workdir`:
  results.json        config, per-seed greedy-evaluation curves, final
                      greedy returns (mean of `eval_episodes` episodes),
                      env steps to reach `--target_return`, env steps/s;
  learning_curve.png  greedy return against env steps, mean and min-max
                      spread over seeds;
  checkpoint/         the final train states (orbax).

Mnih et al. (2015); van Hasselt et al. (2016); seed 004 3(c)-(d).

  python -m experiments.dqn --workdir=/tmp/dqn --num_seeds=4
"""

import dataclasses
import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

from equivlab.rl import dqn

_WORKDIR = flags.DEFINE_string(
  "workdir", "/tmp/equivlab_dqn", "Directory for results and checkpoints."
)
_ENV = flags.DEFINE_string(
  "env", "CartPole-v1", "Environment: a gymnax id, 'ChainMDP' or 'Probe-*'."
)
_NUM_SEEDS = flags.DEFINE_integer(
  "num_seeds", 4, "Independent agents trained together under vmap."
)
_SEED = flags.DEFINE_integer("seed", 0, "Root seed; agent i uses key i.")
_TOTAL_ENV_STEPS = flags.DEFINE_integer(
  "total_env_steps", 300_000, "Training budget per seed, in env steps."
)
_NUM_ENVS = flags.DEFINE_integer(
  "num_envs", 8, "Parallel environments per seed."
)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 2.5e-4, "Adam step size.")
_GAMMA = flags.DEFINE_float("gamma", 0.99, "Discount factor.")
_BUFFER_SIZE = flags.DEFINE_integer("buffer_size", 10_000, "Replay capacity.")
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", 128, "Transitions per gradient step."
)
_LEARNING_STARTS = flags.DEFINE_integer(
  "learning_starts", 10_000, "Env steps before the first gradient step."
)
_TRAIN_EVERY = flags.DEFINE_integer(
  "train_every", 8, "Env steps between gradient steps."
)
_TARGET_UPDATE = flags.DEFINE_enum(
  "target_update",
  "hard",
  ["hard", "polyak"],
  "Hard copy every target_period env steps, or Polyak averaging.",
)
_TARGET_PERIOD = flags.DEFINE_integer(
  "target_period", 500, "Env steps between target-network updates."
)
_TAU = flags.DEFINE_float("tau", 1.0, "Polyak step size (polyak mode).")
_DOUBLE_DQN = flags.DEFINE_boolean(
  "double_dqn", True, "Use the double-DQN target."
)
_LOSS = flags.DEFINE_enum(
  "loss", "l2", ["huber", "l2"], "Loss on the TD error."
)
_MAX_GRAD_NORM = flags.DEFINE_float(
  "max_grad_norm", 0.0, "Global-norm gradient clipping; 0 disables it."
)
_EPSILON_START = flags.DEFINE_float(
  "epsilon_start", 1.0, "Initial exploration probability."
)
_EPSILON_END = flags.DEFINE_float(
  "epsilon_end", 0.05, "Final exploration probability."
)
_EPSILON_DECAY_STEPS = flags.DEFINE_integer(
  "epsilon_decay_steps", 100_000, "Env steps of the linear epsilon decay."
)
_EVAL_EVERY = flags.DEFINE_integer(
  "eval_every", 10_000, "Env steps between greedy evaluations."
)
_EVAL_EPISODES = flags.DEFINE_integer(
  "eval_episodes", 10, "Greedy episodes per evaluation."
)
_HIDDEN = flags.DEFINE_list(
  "hidden_sizes", ["120", "84"], "Hidden-layer widths of the Q-network."
)
_TARGET_RETURN = flags.DEFINE_float(
  "target_return", 475.0, "Greedy return that counts as solved."
)


def steps_to_reach(env_steps, returns, threshold):
  """The first env-step count whose return reaches `threshold`, or None."""
  hits = np.nonzero(np.asarray(returns) >= threshold)[0]
  return int(env_steps[hits[0]]) if hits.size else None


def _shard_seeds(keys):
  """Shards the seed axis over devices when their count divides it."""
  num_devices = jax.device_count()
  if num_devices == 1 or keys.shape[0] % num_devices:
    return keys, 1
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from equivlab import parallel

  mesh = parallel.make_mesh(num_devices)
  return jax.device_put(keys, NamedSharding(mesh, P("data"))), num_devices


def plot_curves(path, env_steps, returns, title, threshold=None):
  """Greedy return against env steps: the mean and min-max over seeds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  returns = np.asarray(returns)
  fig, ax = plt.subplots(figsize=(6, 4))
  for curve in returns:
    ax.plot(env_steps, curve, color="tab:blue", alpha=0.25, lw=0.8)
  ax.fill_between(
    env_steps, returns.min(0), returns.max(0), color="tab:blue", alpha=0.15
  )
  ax.plot(env_steps, returns.mean(0), color="tab:blue", lw=2, label="mean")
  if threshold is not None:
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"{threshold:g}")
  ax.set_xlabel("env steps")
  ax.set_ylabel("greedy return (mean of eval episodes)")
  ax.set_title(title)
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def save_checkpoint(path, state):
  """Saves the final train states (all seeds) with orbax."""
  import orbax.checkpoint as ocp

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), jax.device_get(state._asdict()))
  checkpointer.wait_until_finished()


def run(
  config: dqn.DQNConfig,
  workdir: str,
  num_seeds: int = 4,
  seed: int = 0,
  target_return: float = 475.0,
) -> dict:
  """Trains `num_seeds` agents and writes results, a plot and a checkpoint.

  Args:
    config: the DQN settings.
    workdir: output directory (created).
    num_seeds: agents trained together under vmap.
    seed: root seed.
    target_return: the greedy return that counts as solved.

  Returns:
    The results written to results.json.

  Raises:
    ValueError: for a bad config or num_seeds < 1.
  """
  if num_seeds < 1:
    raise ValueError(f"num_seeds must be >= 1, got {num_seeds}.")
  os.makedirs(workdir, exist_ok=True)
  train = jax.jit(jax.vmap(dqn.make_train(config)))
  keys = jax.random.split(jax.random.key(seed), num_seeds)
  keys, num_shards = _shard_seeds(keys)
  logging.info(
    "DQN on %s: %d seeds x %d env steps, seed axis over %d device(s).",
    config.env_name,
    num_seeds,
    config.total_env_steps,
    num_shards,
  )
  start = time.perf_counter()
  compiled = train.lower(keys).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(keys))
  run_s = time.perf_counter() - start
  metrics = jax.device_get(out["metrics"])
  env_steps = np.asarray(metrics["eval_env_steps"][0])
  eval_returns = np.asarray(metrics["eval_return"])
  # Training-episode returns, averaged over each evaluation period.
  iters = eval_returns.shape[1]
  ret_sum = np.asarray(metrics["episode_return_sum"]).reshape(
    num_seeds, iters, -1
  )
  episodes = np.asarray(metrics["episodes"]).reshape(num_seeds, iters, -1)
  train_curve = ret_sum.sum(-1) / np.maximum(episodes.sum(-1), 1)
  steps_needed = [
    steps_to_reach(env_steps, curve, target_return) for curve in eval_returns
  ]
  results = {
    "config": dataclasses.asdict(config),
    "num_seeds": num_seeds,
    "seed": seed,
    "devices": num_shards,
    "target_return": target_return,
    "eval_env_steps": env_steps.tolist(),
    "eval_returns": eval_returns.tolist(),
    "train_episode_returns": train_curve.tolist(),
    "final_greedy_returns": eval_returns[:, -1].tolist(),
    "best_greedy_returns": eval_returns.max(1).tolist(),
    "steps_to_target": steps_needed,
    "all_seeds_reached_target": all(s is not None for s in steps_needed),
    "compile_seconds": compile_s,
    "run_seconds": run_s,
    "env_steps_per_second": num_seeds * config.total_env_steps / run_s,
    "jax_backend": jax.default_backend(),
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  plot_curves(
    os.path.join(workdir, "learning_curve.png"),
    env_steps,
    eval_returns,
    f"DQN on {config.env_name}, {num_seeds} seeds",
    threshold=target_return,
  )
  save_checkpoint(os.path.join(workdir, "checkpoint"), out["state"])
  logging.info(
    "final greedy returns %s; steps to %g: %s; %.0f env steps/s",
    results["final_greedy_returns"],
    target_return,
    steps_needed,
    results["env_steps_per_second"],
  )
  return results


def main(argv):
  del argv
  config = dqn.DQNConfig(
    env_name=_ENV.value,
    num_envs=_NUM_ENVS.value,
    total_env_steps=_TOTAL_ENV_STEPS.value,
    hidden_sizes=tuple(int(h) for h in _HIDDEN.value),
    learning_rate=_LEARNING_RATE.value,
    gamma=_GAMMA.value,
    loss=_LOSS.value,
    max_grad_norm=_MAX_GRAD_NORM.value or None,
    double_dqn=_DOUBLE_DQN.value,
    buffer_size=_BUFFER_SIZE.value,
    batch_size=_BATCH_SIZE.value,
    learning_starts=_LEARNING_STARTS.value,
    train_every=_TRAIN_EVERY.value,
    target_update=_TARGET_UPDATE.value,
    target_period=_TARGET_PERIOD.value,
    tau=_TAU.value,
    epsilon_start=_EPSILON_START.value,
    epsilon_end=_EPSILON_END.value,
    epsilon_decay_steps=_EPSILON_DECAY_STEPS.value,
    eval_every=_EVAL_EVERY.value,
    eval_episodes=_EVAL_EPISODES.value,
  )
  run(
    config,
    _WORKDIR.value,
    num_seeds=_NUM_SEEDS.value,
    seed=_SEED.value,
    target_return=_TARGET_RETURN.value,
  )


if __name__ == "__main__":
  app.run(main)
