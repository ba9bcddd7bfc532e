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
import types

import jax
import numpy as np
from absl import flags, logging

from equivlab.rl import dqn
from experiments import _launch


def define_flags(
  flag_values: flags.FlagValues = flags.FLAGS,
) -> types.SimpleNamespace:
  """Registers this experiment's flags; returns their holders.

  Called only when the module runs as a script (and by tests, with a fresh
  `flags.FlagValues()`), so that importing several experiments into one
  process never defines a flag such as --workdir twice.
  """
  workdir = flags.DEFINE_string(
    "workdir",
    "/tmp/equivlab_dqn",
    "Directory for results and checkpoints.",
    flag_values=flag_values,
  )
  env = flags.DEFINE_string(
    "env",
    "CartPole-v1",
    "Environment: a gymnax id, 'ChainMDP' or 'Probe-*'.",
    flag_values=flag_values,
  )
  num_seeds = flags.DEFINE_integer(
    "num_seeds",
    4,
    "Independent agents trained together under vmap.",
    flag_values=flag_values,
  )
  seed = flags.DEFINE_integer(
    "seed", 0, "Root seed; agent i uses key i.", flag_values=flag_values
  )
  total_env_steps = flags.DEFINE_integer(
    "total_env_steps",
    300_000,
    "Training budget per seed, in env steps.",
    flag_values=flag_values,
  )
  num_envs = flags.DEFINE_integer(
    "num_envs", 8, "Parallel environments per seed.", flag_values=flag_values
  )
  learning_rate = flags.DEFINE_float(
    "learning_rate", 2.5e-4, "Adam step size.", flag_values=flag_values
  )
  gamma = flags.DEFINE_float(
    "gamma", 0.99, "Discount factor.", flag_values=flag_values
  )
  buffer_size = flags.DEFINE_integer(
    "buffer_size", 10_000, "Replay capacity.", flag_values=flag_values
  )
  batch_size = flags.DEFINE_integer(
    "batch_size", 128, "Transitions per gradient step.", flag_values=flag_values
  )
  learning_starts = flags.DEFINE_integer(
    "learning_starts",
    10_000,
    "Env steps before the first gradient step.",
    flag_values=flag_values,
  )
  train_every = flags.DEFINE_integer(
    "train_every",
    8,
    "Env steps between gradient steps.",
    flag_values=flag_values,
  )
  target_update = flags.DEFINE_enum(
    "target_update",
    "hard",
    ["hard", "polyak"],
    "Hard copy every target_period env steps, or Polyak averaging.",
    flag_values=flag_values,
  )
  target_period = flags.DEFINE_integer(
    "target_period",
    500,
    "Env steps between target-network updates.",
    flag_values=flag_values,
  )
  tau = flags.DEFINE_float(
    "tau", 1.0, "Polyak step size (polyak mode).", flag_values=flag_values
  )
  double_dqn = flags.DEFINE_boolean(
    "double_dqn", True, "Use the double-DQN target.", flag_values=flag_values
  )
  loss = flags.DEFINE_enum(
    "loss",
    "l2",
    ["huber", "l2"],
    "Loss on the TD error.",
    flag_values=flag_values,
  )
  max_grad_norm = flags.DEFINE_float(
    "max_grad_norm",
    0.0,
    "Global-norm gradient clipping; 0 disables it.",
    flag_values=flag_values,
  )
  epsilon_start = flags.DEFINE_float(
    "epsilon_start",
    1.0,
    "Initial exploration probability.",
    flag_values=flag_values,
  )
  epsilon_end = flags.DEFINE_float(
    "epsilon_end",
    0.05,
    "Final exploration probability.",
    flag_values=flag_values,
  )
  epsilon_decay_steps = flags.DEFINE_integer(
    "epsilon_decay_steps",
    100_000,
    "Env steps of the linear epsilon decay.",
    flag_values=flag_values,
  )
  eval_every = flags.DEFINE_integer(
    "eval_every",
    10_000,
    "Env steps between greedy evaluations.",
    flag_values=flag_values,
  )
  eval_episodes = flags.DEFINE_integer(
    "eval_episodes",
    10,
    "Greedy episodes per evaluation.",
    flag_values=flag_values,
  )
  hidden = flags.DEFINE_list(
    "hidden_sizes",
    ["120", "84"],
    "Hidden-layer widths of the Q-network.",
    flag_values=flag_values,
  )
  target_return = flags.DEFINE_float(
    "target_return",
    475.0,
    "Greedy return that counts as solved.",
    flag_values=flag_values,
  )
  return types.SimpleNamespace(
    workdir=workdir,
    env=env,
    num_seeds=num_seeds,
    seed=seed,
    total_env_steps=total_env_steps,
    num_envs=num_envs,
    learning_rate=learning_rate,
    gamma=gamma,
    buffer_size=buffer_size,
    batch_size=batch_size,
    learning_starts=learning_starts,
    train_every=train_every,
    target_update=target_update,
    target_period=target_period,
    tau=tau,
    double_dqn=double_dqn,
    loss=loss,
    max_grad_norm=max_grad_norm,
    epsilon_start=epsilon_start,
    epsilon_end=epsilon_end,
    epsilon_decay_steps=epsilon_decay_steps,
    eval_every=eval_every,
    eval_episodes=eval_episodes,
    hidden=hidden,
    target_return=target_return,
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


def main(argv, holders: types.SimpleNamespace):
  del argv
  config = dqn.DQNConfig(
    env_name=holders.env.value,
    num_envs=holders.num_envs.value,
    total_env_steps=holders.total_env_steps.value,
    hidden_sizes=tuple(int(h) for h in holders.hidden.value),
    learning_rate=holders.learning_rate.value,
    gamma=holders.gamma.value,
    loss=holders.loss.value,
    max_grad_norm=holders.max_grad_norm.value or None,
    double_dqn=holders.double_dqn.value,
    buffer_size=holders.buffer_size.value,
    batch_size=holders.batch_size.value,
    learning_starts=holders.learning_starts.value,
    train_every=holders.train_every.value,
    target_update=holders.target_update.value,
    target_period=holders.target_period.value,
    tau=holders.tau.value,
    epsilon_start=holders.epsilon_start.value,
    epsilon_end=holders.epsilon_end.value,
    epsilon_decay_steps=holders.epsilon_decay_steps.value,
    eval_every=holders.eval_every.value,
    eval_episodes=holders.eval_episodes.value,
  )
  run(
    config,
    holders.workdir.value,
    num_seeds=holders.num_seeds.value,
    seed=holders.seed.value,
    target_return=holders.target_return.value,
  )


if __name__ == "__main__":
  _launch.run(main, define_flags)
