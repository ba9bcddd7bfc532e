r"""DQN throughput: the fully jitted loop against a Python-driven loop.

(a) `equivlab.rl.dqn.make_train` (acting, env stepping, replay, learning,
    target updates and evaluation all inside one `jax.jit` of `lax.scan`)
    against the common CleanRL-style structure: a Python `for` loop over
    iterations calling a jitted `act`, a jitted vectorised env step and a
    jitted `update`, with the replay buffer in NumPy on the host and the
    target copy done in Python. Same hyperparameters, same env steps, one
    seed each; compilation is excluded from both timings.
(b) the jitted loop with 1, 4 and 8 seeds under `jax.vmap`.

Prints the env-steps-per-second figures and ratios, and writes them to
`--output` as JSON.

  python -m benchmarks.dqn --total_env_steps=50000
"""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from equivlab.rl import dqn, tabular, value_learning
from equivlab.rl import envs as envs_lib

_TOTAL_ENV_STEPS = flags.DEFINE_integer(
  "total_env_steps", 50_000, "Env steps per seed for every measurement."
)
_SEEDS = flags.DEFINE_list(
  "seeds", ["1", "4", "8"], "Numbers of vmapped seeds to time in part (b)."
)
_REPEATS = flags.DEFINE_integer(
  "repeats", 1, "Timed runs per measurement; the fastest is kept."
)
_OUTPUT = flags.DEFINE_string(
  "output", "/tmp/equivlab_dqn_benchmark.json", "Where to write results."
)


def benchmark_config(total_env_steps: int) -> dqn.DQNConfig:
  """The experiment's CartPole settings at a given budget, one evaluation."""
  return dataclasses.replace(
    dqn.DQNConfig(),
    total_env_steps=total_env_steps,
    eval_every=total_env_steps,
    learning_starts=min(10_000, total_env_steps // 5),
    epsilon_decay_steps=max(1, total_env_steps // 3),
  )


def time_jitted(config: dqn.DQNConfig, num_seeds: int, repeats: int = 1):
  """Env steps per second of `jit(vmap(train))` over `num_seeds` seeds.

  Returns:
    `(steps_per_second, compile_seconds, final_greedy_returns,
    steps_per_cpu_second)`; the last counts the process's CPU time, which
    other load on a shared machine disturbs less than wall time.
  """
  train = jax.jit(jax.vmap(dqn.make_train(config)))
  keys = jax.random.split(jax.random.key(0), num_seeds)
  start = time.perf_counter()
  compiled = train.lower(keys).compile()
  compile_s = time.perf_counter() - start
  best, best_cpu = float("inf"), float("inf")
  out = None
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(compiled(keys))
    best = min(best, time.perf_counter() - start)
    best_cpu = min(best_cpu, time.process_time() - start_cpu)
  returns = np.asarray(out["metrics"]["eval_return"][:, -1]).tolist()
  steps = num_seeds * config.total_env_steps
  return steps / best, compile_s, returns, steps / best_cpu


def python_loop(config: dqn.DQNConfig, seed: int = 0, warmup: bool = False):
  """DQN driven from Python, CleanRL style.

  Returns `(wall seconds, CPU seconds, final greedy return)`.

  The same network, optimizer, loss, epsilon schedule, train/target periods
  and evaluation as `dqn.make_train`; only the control flow differs.
  """
  env, env_params = dqn.make_env(config)
  network = dqn.make_network(config, envs_lib.num_actions(env, env_params))
  optimizer = dqn.make_optimizer(config)
  num_envs = config.num_envs
  loss_fn = (
    value_learning.huber_loss
    if config.loss == "huber"
    else value_learning.l2_loss
  )
  root = jax.random.key(seed)
  init_key, reset_key, run_key, eval_key = jax.random.split(root, 4)

  reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
  env_step = jax.jit(
    jax.vmap(lambda k, s, a: envs_lib.step(k, env, s, a, env_params))
  )

  @jax.jit
  def act(params, obs, key, epsilon):
    q = network.apply(params, obs)
    return jax.vmap(tabular.epsilon_greedy, in_axes=(0, 0, None))(
      jax.random.split(key, num_envs), q, epsilon
    )

  def batch_loss(params, target_params, batch):
    td = dqn.td_errors(network, params, target_params, batch, config.double_dqn)
    return jnp.mean(loss_fn(td))

  @jax.jit
  def update(params, target_params, opt_state, batch):
    loss, grads = jax.value_and_grad(batch_loss)(params, target_params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  evaluate = jax.jit(
    lambda key, params: dqn.evaluate(
      key, network, params, env, env_params, config.eval_episodes
    )
  )

  obs, env_state = reset(jax.random.split(reset_key, num_envs), env_params)
  params = network.init(init_key, obs)
  target_params = params
  opt_state = optimizer.init(params)
  capacity = config.buffer_size
  obs_shape = tuple(obs.shape[1:])
  buffer = {
    "obs": np.zeros((capacity,) + obs_shape, np.float32),
    "action": np.zeros((capacity,), np.int32),
    "reward": np.zeros((capacity,), np.float32),
    "discount": np.zeros((capacity,), np.float32),
    "next_obs": np.zeros((capacity,) + obs_shape, np.float32),
  }
  position, size = 0, 0
  rng = np.random.default_rng(seed)
  iterations = 2 if warmup else config.total_env_steps // num_envs
  start, start_cpu = time.perf_counter(), time.process_time()
  for it in range(iterations):
    steps_before = it * num_envs
    steps_after = steps_before + num_envs
    fraction = min(steps_before / config.epsilon_decay_steps, 1.0)
    epsilon = config.epsilon_start + fraction * (
      config.epsilon_end - config.epsilon_start
    )
    step_key = jax.random.fold_in(run_key, steps_before)
    act_key, env_key = jax.random.split(step_key)
    actions = act(params, obs, act_key, epsilon)
    out = env_step(jax.random.split(env_key, num_envs), env_state, actions)
    rows = (position + np.arange(num_envs)) % capacity
    buffer["obs"][rows] = np.asarray(obs)
    buffer["action"][rows] = np.asarray(actions)
    buffer["reward"][rows] = np.asarray(out.reward)
    buffer["discount"][rows] = np.where(
      np.asarray(out.terminated), 0.0, config.gamma
    )
    buffer["next_obs"][rows] = np.asarray(out.next_obs)
    position = (position + num_envs) % capacity
    size = min(size + num_envs, capacity)
    obs, env_state = out.obs, out.state
    learn = (
      steps_after // config.train_every > steps_before // config.train_every
      and steps_after >= config.learning_starts
      and size >= config.batch_size
    )
    if learn or warmup:
      idx = rng.integers(0, size, config.batch_size)
      batch = dqn.Transition(**{k: v[idx] for k, v in buffer.items()})
      params, opt_state, _ = update(params, target_params, opt_state, batch)
    if steps_after // config.target_period > (
      steps_before // config.target_period
    ):
      if config.target_update == "hard":
        target_params = params
      else:
        target_params = optax.incremental_update(
          params, target_params, config.tau
        )
  final_return = float(evaluate(eval_key, params))
  wall = time.perf_counter() - start
  return wall, time.process_time() - start_cpu, final_return


def main(argv):
  del argv
  config = benchmark_config(_TOTAL_ENV_STEPS.value)
  results = {
    "config": dataclasses.asdict(config),
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "cpu_count": os.cpu_count(),
  }
  # (a) One seed each way.
  jit_sps, jit_compile, jit_returns, jit_cpu_sps = time_jitted(
    config, 1, _REPEATS.value
  )
  python_loop(config, warmup=True)  # compiles act, env step, update, eval
  python_s, python_cpu_s = float("inf"), float("inf")
  python_return = None
  for _ in range(_REPEATS.value):
    seconds, cpu_seconds, python_return = python_loop(config)
    python_s = min(python_s, seconds)
    python_cpu_s = min(python_cpu_s, cpu_seconds)
  python_sps = config.total_env_steps / python_s
  python_cpu_sps = config.total_env_steps / python_cpu_s
  results["a"] = {
    "jitted_env_steps_per_second": jit_sps,
    "jitted_env_steps_per_cpu_second": jit_cpu_sps,
    "jitted_compile_seconds": jit_compile,
    "jitted_final_greedy_return": jit_returns[0],
    "python_loop_env_steps_per_second": python_sps,
    "python_loop_env_steps_per_cpu_second": python_cpu_sps,
    "python_loop_final_greedy_return": python_return,
    "speedup": jit_sps / python_sps,
    "speedup_cpu_time": jit_cpu_sps / python_cpu_sps,
  }
  logging.info("(a) %s", results["a"])
  print(
    f"(a) jitted loop {jit_sps:,.0f} env steps/s vs Python loop "
    f"{python_sps:,.0f} env steps/s: {jit_sps / python_sps:.1f}x "
    f"(per CPU second: {jit_cpu_sps:,.0f} vs {python_cpu_sps:,.0f}, "
    f"{jit_cpu_sps / python_cpu_sps:.1f}x)"
  )
  # (b) Vmapped seeds.
  results["b"] = {}
  for num_seeds in (int(s) for s in _SEEDS.value):
    if num_seeds == 1:
      sps, compile_s, cpu_sps = jit_sps, jit_compile, jit_cpu_sps
    else:
      sps, compile_s, _, cpu_sps = time_jitted(
        config, num_seeds, _REPEATS.value
      )
    results["b"][str(num_seeds)] = {
      "env_steps_per_second": sps,
      "env_steps_per_cpu_second": cpu_sps,
      "per_seed_env_steps_per_second": sps / num_seeds,
      "compile_seconds": compile_s,
      "vs_one_seed": sps / jit_sps,
      "vs_one_seed_cpu_time": cpu_sps / jit_cpu_sps,
    }
    print(
      f"(b) {num_seeds} seed(s): {sps:,.0f} env steps/s in total "
      f"({sps / jit_sps:.2f}x one seed); {cpu_sps:,.0f} per CPU second "
      f"({cpu_sps / jit_cpu_sps:.2f}x)"
    )
  with open(_OUTPUT.value, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
