r"""DQN throughput: the fully jitted loop against a Python-driven loop.

(a) `equivlab.rl.dqn.make_train` (acting, env stepping, replay, learning,
    target updates and evaluation all inside one `jax.jit` of `lax.scan`)
    against the common CleanRL-style structure: a Python `for` loop over
    iterations calling a jitted `act`, a jitted vectorised env step and a
    jitted `update`, with the replay buffer in NumPy on the host and the
    target copy done in Python. Same hyperparameters, same env steps, one
    seed each; compilation is excluded from both timings.
(b) the jitted loop with 1, 4 and 16 seeds under `jax.vmap`.
(c) against a reference loop read from git: `benchmarks/dqn_reference.py`
    at `--reference_commit` (by default the last commit that has that file:
    the first implementation of the loop, op for op), extracted with `git
    show` into a temporary directory and imported. Both loops run at the
    same seed counts, timed in turn in one process (alternating run by
    run, the fastest of `--repeats` runs of each side kept).
    `--no_reference` skips it; without git or that commit the benchmark
    stops with a message that says so.
(d) the seeds in vmapped groups, one group per CPU core in threads
    (`dqn.seed_runner`), against one `jit(vmap)` program over all of them
    (and against the reference loop, when there is one), at each seed
    count >= 2, timed in turn.

Prints the env-steps-per-second figures and ratios, and writes them to
`--output` as JSON.

  python -m benchmarks.dqn --total_env_steps=20000 --seed_counts=1,4,16
"""

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from equivlab import parallel
from equivlab.rl import dqn, evaluation, tabular, value_learning
from equivlab.rl import envs as envs_lib

REFERENCE_PATH = "benchmarks/dqn_reference.py"
_REPO = pathlib.Path(__file__).resolve().parent.parent


class ReferenceUnavailableError(RuntimeError):
  """The reference loop cannot be read from git or imported."""


def _git(*args: str) -> str:
  """`git args...` in the repository; its stdout, stripped.

  Raises:
    ReferenceUnavailableError: without git, outside a repository, or when
      the command fails (its message included).
  """
  if shutil.which("git") is None:
    raise ReferenceUnavailableError(
      "git is not installed: part (c) reads the reference loop from git. "
      "Install git, or pass --no_reference."
    )
  done = subprocess.run(
    ["git", *args], cwd=_REPO, capture_output=True, text=True, check=False
  )
  if done.returncode:
    reason = done.stderr.strip() or "no such revision"
    raise ReferenceUnavailableError(
      f"git {' '.join(args)} failed in {_REPO}: {reason}"
    )
  return done.stdout.strip()


def default_reference_commit() -> str:
  """The last commit that has `benchmarks/dqn_reference.py`.

  Raises:
    ReferenceUnavailableError: without git or a history that holds it.
  """
  last = _git("log", "-1", "--format=%H", "--", REFERENCE_PATH)
  if not last:
    raise ReferenceUnavailableError(
      f"no commit in this clone's history has {REFERENCE_PATH} (a shallow "
      "clone?). Fetch the history, pass --reference_commit, or pass "
      "--no_reference."
    )
  has_it = subprocess.run(
    ["git", "cat-file", "-e", f"{last}:{REFERENCE_PATH}"],
    cwd=_REPO,
    capture_output=True,
    check=False,
  )
  # The last commit to touch the file may be the one that removed it.
  return last if has_it.returncode == 0 else _git("rev-parse", f"{last}^")


def load_reference(commit: str | None = None) -> types.ModuleType:
  """`benchmarks/dqn_reference.py` at `commit`, imported from a temp dir.

  Args:
    commit: any revision git understands; None for
      `default_reference_commit()`.

  Returns:
    The module; its `make_train(config)` is the reference loop, and
    `COMMIT` the full hash it was read at.

  Raises:
    ReferenceUnavailableError: naming the commit and the reason, without
      git, for an unknown commit, one without the file, or a file that no
      longer imports against today's library.
  """
  commit = commit or default_reference_commit()
  try:
    full = _git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    source = _git("show", f"{full}:{REFERENCE_PATH}")
  except ReferenceUnavailableError as error:
    raise ReferenceUnavailableError(
      f"cannot read {REFERENCE_PATH} at commit {commit!r} ({error}). "
      "Pass --reference_commit=<a commit that has it>, or --no_reference."
    ) from None
  with tempfile.TemporaryDirectory() as tmp:
    path = pathlib.Path(tmp) / "dqn_reference.py"
    path.write_text(source + "\n")
    name = f"_dqn_reference_{commit[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 (any import failure)
      raise ReferenceUnavailableError(
        f"{REFERENCE_PATH} at commit {commit!r} does not import against "
        f"today's library: {type(error).__name__}: {error}"
      ) from error
  if not callable(getattr(module, "make_train", None)):
    raise ReferenceUnavailableError(
      f"{REFERENCE_PATH} at commit {commit!r} defines no make_train."
    )
  module.COMMIT = full
  return module


def benchmark_config(total_env_steps: int) -> dqn.DQNConfig:
  """The experiment's CartPole settings at a given budget, one evaluation."""
  return dataclasses.replace(
    dqn.DQNConfig(),
    total_env_steps=total_env_steps,
    eval_every=total_env_steps,
    learning_starts=min(10_000, total_env_steps // 5),
    epsilon_decay_steps=max(1, total_env_steps // 3),
  )


def compile_train(
  config: dqn.DQNConfig, num_seeds: int, make_train=dqn.make_train
) -> tuple[Callable[[], tuple[float, float, list[float]]], float]:
  """`jit(vmap(train))` over `num_seeds` seeds, compiled ahead of timing.

  Args:
    config: the settings.
    num_seeds: seeds trained together under `vmap`.
    make_train: `dqn.make_train` or a reference loop's `make_train`.

  Returns:
    `(run, compile_seconds)`; `run()` trains once and returns `(wall
    seconds, CPU seconds, final greedy returns)`. CPU time counts the
    process's CPU time, which other load on a shared machine disturbs less
    than wall time.
  """
  train = jax.jit(jax.vmap(make_train(config)))
  keys = jax.random.split(jax.random.key(0), num_seeds)
  start = time.perf_counter()
  compiled = train.lower(keys).compile()
  compile_s = time.perf_counter() - start

  def run():
    start, start_cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(compiled(keys))
    wall = time.perf_counter() - start
    returns = np.asarray(out["metrics"]["eval_return"][:, -1]).tolist()
    return wall, time.process_time() - start_cpu, returns

  return run, compile_s


def time_in_turn(
  config: dqn.DQNConfig, num_seeds: int, repeats: int, makers: dict
) -> dict:
  """Times several `make_train`s in turn, `repeats` rounds, best of each.

  Alternating the sides round by round lets a change in the machine's load
  touch all of them alike.

  Returns:
    name -> `(steps_per_second, compile_seconds, final_greedy_returns,
    steps_per_cpu_second)`.
  """
  compiled = {
    name: compile_train(config, num_seeds, make)
    for name, make in makers.items()
  }
  best = {name: [math.inf, math.inf, None] for name in makers}
  for _ in range(repeats):
    for name, (run, _) in compiled.items():
      wall, cpu, returns = run()
      best[name] = [
        min(best[name][0], wall),
        min(best[name][1], cpu),
        returns,
      ]
  steps = num_seeds * config.total_env_steps
  return {
    name: (steps / wall, compiled[name][1], returns, steps / cpu)
    for name, (wall, cpu, returns) in best.items()
  }


def time_jitted(
  config: dqn.DQNConfig,
  num_seeds: int,
  repeats: int = 1,
  make_train=dqn.make_train,
):
  """Env steps per second of `jit(vmap(train))` over `num_seeds` seeds.

  Returns:
    `(steps_per_second, compile_seconds, final_greedy_returns,
    steps_per_cpu_second)`, the fastest of `repeats` runs.
  """
  return time_in_turn(config, num_seeds, repeats, {"": make_train})[""]


class _PythonParts(NamedTuple):
  """The jitted pieces a CleanRL-style loop calls from Python."""

  network: dqn.QNetwork
  optimizer: optax.GradientTransformation
  reset: Callable
  env_step: Callable
  act: Callable
  update: Callable
  evaluate: Callable


def _python_parts(config: dqn.DQNConfig) -> _PythonParts:
  """Jitted reset, act, env step, update and evaluation for `config`."""
  env, env_params = dqn.make_env(config)
  network = dqn.make_network(config, envs_lib.num_actions(env, env_params))
  optimizer = dqn.make_optimizer(config)
  num_envs = config.num_envs
  loss_fn = (
    value_learning.huber_loss
    if config.loss == "huber"
    else value_learning.l2_loss
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

  reset = jax.vmap(env.reset, in_axes=(0, None))
  return _PythonParts(
    network=network,
    optimizer=optimizer,
    reset=jax.jit(lambda keys: reset(keys, env_params)),
    env_step=jax.jit(
      jax.vmap(lambda k, s, a: envs_lib.step(k, env, s, a, env_params))
    ),
    act=act,
    update=update,
    evaluate=jax.jit(
      lambda key, params: evaluation.evaluate(
        key, network, params, env, env_params, config.eval_episodes
      )
    ),
  )


class _NumpyReplay:
  """A ring buffer of transitions in host memory, as CleanRL keeps it."""

  def __init__(self, capacity: int, obs_shape: tuple[int, ...]):
    self.capacity, self.position, self.size = capacity, 0, 0
    self.columns = {
      "obs": np.zeros((capacity, *obs_shape), np.float32),
      "action": np.zeros((capacity,), np.int32),
      "reward": np.zeros((capacity,), np.float32),
      "discount": np.zeros((capacity,), np.float32),
      "next_obs": np.zeros((capacity, *obs_shape), np.float32),
    }

  def add(self, obs, actions, out: envs_lib.Step, gamma: float) -> None:
    """Writes one step of every environment at the head of the ring."""
    rows = (self.position + np.arange(len(actions))) % self.capacity
    self.columns["obs"][rows] = np.asarray(obs)
    self.columns["action"][rows] = np.asarray(actions)
    self.columns["reward"][rows] = np.asarray(out.reward)
    self.columns["discount"][rows] = np.where(
      np.asarray(out.terminated), 0.0, gamma
    )
    self.columns["next_obs"][rows] = np.asarray(out.next_obs)
    self.position = (self.position + len(actions)) % self.capacity
    self.size = min(self.size + len(actions), self.capacity)

  def sample(self, rng: np.random.Generator, batch_size: int):
    """A uniformly sampled batch as a `dqn.Transition`."""
    rows = rng.integers(0, self.size, batch_size)
    return dqn.Transition(**{k: v[rows] for k, v in self.columns.items()})


def _crossed(steps_before: int, period: int, num_envs: int) -> bool:
  return (steps_before + num_envs) // period > steps_before // period


def python_loop(
  config: dqn.DQNConfig,
  parts: _PythonParts | None = None,
  seed: int = 0,
  warmup: bool = False,
):
  """DQN driven from Python, CleanRL style.

  The same network, optimizer, loss, epsilon schedule, train/target periods
  and evaluation as `dqn.make_train`; only the control flow differs.

  Args:
    config: the settings.
    parts: `_python_parts(config)`; pass the same ones to a warm-up call
      (`warmup=True`: two iterations) and to the timed calls, so that the
      timed calls do not compile.
    seed: the seed.
    warmup: run two iterations only, learning in both.

  Returns:
    `(wall seconds, CPU seconds, final greedy return)`.
  """
  parts = parts or _python_parts(config)
  num_envs = config.num_envs
  init_key, reset_key, run_key, eval_key = jax.random.split(
    jax.random.key(seed), 4
  )
  obs, env_state = parts.reset(jax.random.split(reset_key, num_envs))
  params = target_params = parts.network.init(init_key, obs)
  opt_state = parts.optimizer.init(params)
  buffer = _NumpyReplay(config.buffer_size, tuple(obs.shape[1:]))
  rng = np.random.default_rng(seed)
  iterations = 2 if warmup else config.total_env_steps // num_envs
  start, start_cpu = time.perf_counter(), time.process_time()
  for it in range(iterations):
    steps_before = it * num_envs
    fraction = min(steps_before / config.epsilon_decay_steps, 1.0)
    epsilon = config.epsilon_start + fraction * (
      config.epsilon_end - config.epsilon_start
    )
    act_key, env_key = jax.random.split(
      jax.random.fold_in(run_key, steps_before)
    )
    actions = parts.act(params, obs, act_key, epsilon)
    out = parts.env_step(
      jax.random.split(env_key, num_envs), env_state, actions
    )
    buffer.add(obs, actions, out, config.gamma)
    obs, env_state = out.obs, out.state
    learn = (
      _crossed(steps_before, config.train_every, num_envs)
      and steps_before + num_envs >= config.learning_starts
      and buffer.size >= config.batch_size
    )
    if learn or warmup:
      batch = buffer.sample(rng, config.batch_size)
      params, opt_state, _ = parts.update(
        params, target_params, opt_state, batch
      )
    if _crossed(steps_before, config.target_period, num_envs):
      target_params = (
        params
        if config.target_update == "hard"
        else optax.incremental_update(params, target_params, config.tau)
      )
  final_return = float(parts.evaluate(eval_key, params))
  wall = time.perf_counter() - start
  return wall, time.process_time() - start_cpu, final_return


def part_a(config: dqn.DQNConfig, repeats: int) -> dict:
  """(a) One seed, the jitted loop against the Python-driven loop."""
  jit_sps, jit_compile, jit_returns, jit_cpu_sps = time_jitted(
    config, 1, repeats
  )
  parts = _python_parts(config)
  python_loop(config, parts, warmup=True)  # compiles every jitted piece
  python_s, python_cpu_s = float("inf"), float("inf")
  python_return = None
  for _ in range(repeats):
    seconds, cpu_seconds, python_return = python_loop(config, parts)
    python_s = min(python_s, seconds)
    python_cpu_s = min(python_cpu_s, cpu_seconds)
  python_sps = config.total_env_steps / python_s
  python_cpu_sps = config.total_env_steps / python_cpu_s
  print(
    f"(a) jitted loop {jit_sps:,.0f} env steps/s vs Python loop "
    f"{python_sps:,.0f} env steps/s: {jit_sps / python_sps:.1f}x "
    f"(per CPU second: {jit_cpu_sps:,.0f} vs {python_cpu_sps:,.0f}, "
    f"{jit_cpu_sps / python_cpu_sps:.1f}x)"
  )
  return {
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


def part_b_and_c(
  config: dqn.DQNConfig,
  seed_counts,
  repeats: int,
  reference: types.ModuleType | None = None,
):
  """(b) vmapped seeds; (c) each against the reference loop, if any.

  For each seed count the loops are timed in turn, round by round
  (`time_in_turn`), so a change in the machine's load touches both sides
  alike. Without `reference`, part (c) is empty.
  """
  part_b, part_c = {}, {}
  first = None
  makers = {"after": dqn.make_train}
  if reference is not None:
    makers["before"] = reference.make_train
  for num_seeds in seed_counts:
    timed = time_in_turn(config, num_seeds, repeats, makers)
    sps, compile_s, _, cpu_sps = timed["after"]
    first = first or sps
    part_b[str(num_seeds)] = {
      "env_steps_per_second": sps,
      "env_steps_per_cpu_second": cpu_sps,
      "per_seed_env_steps_per_second": sps / num_seeds,
      "compile_seconds": compile_s,
      "vs_first_seed_count": sps / first,
    }
    print(
      f"(b) {num_seeds} seed(s): {sps:,.0f} env steps/s in total "
      f"({sps / first:.2f}x {seed_counts[0]} seed(s)); "
      f"{cpu_sps:,.0f} per CPU second"
    )
    if reference is None:
      continue
    old_sps, old_compile_s, _, old_cpu_sps = timed["before"]
    part_c[str(num_seeds)] = {
      "before_env_steps_per_second": old_sps,
      "before_env_steps_per_cpu_second": old_cpu_sps,
      "before_compile_seconds": old_compile_s,
      "after_env_steps_per_second": sps,
      "after_env_steps_per_cpu_second": cpu_sps,
      "speedup": sps / old_sps,
      "speedup_cpu_time": cpu_sps / old_cpu_sps,
    }
    print(
      f"(c) {num_seeds} seed(s): today/reference {sps / old_sps:.2f}x "
      f"({sps:,.0f} vs {old_sps:,.0f} env steps/s; per CPU second "
      f"{cpu_sps / old_cpu_sps:.2f}x)"
    )
  return part_b, part_c


def part_d(
  config: dqn.DQNConfig,
  seed_counts,
  repeats: int,
  reference: types.ModuleType | None = None,
) -> dict:
  """(d) `dqn.seed_runner` against one program (and the reference loop)."""
  results = {}
  for num_seeds in [n for n in seed_counts if n >= 2]:
    keys = jax.random.split(jax.random.key(0), num_seeds)
    runner = dqn.seed_runner(config)
    jax.block_until_ready(runner(keys))  # compiles every group size

    def grouped(runner=runner, keys=keys):
      start = time.perf_counter()
      jax.block_until_ready(runner(keys))
      return time.perf_counter() - start

    runs = {
      "groups": grouped,
      "one program": _timer(compile_train(config, num_seeds)[0]),
    }
    if reference is not None:
      runs["before"] = _timer(
        compile_train(config, num_seeds, reference.make_train)[0]
      )
    best = dict.fromkeys(runs, math.inf)
    for _ in range(repeats):
      for name, run in runs.items():
        best[name] = min(best[name], run())
    steps = num_seeds * config.total_env_steps
    sps = {name: steps / seconds for name, seconds in best.items()}
    groups = len(parallel.group_bounds(num_seeds))
    results[str(num_seeds)] = {
      "groups": groups,
      "env_steps_per_second": sps,
      "groups_over_one_program": sps["groups"] / sps["one program"],
    }
    line = (
      f"(d) {num_seeds} seeds in {groups} vmapped groups on threads: "
      f"{sps['groups']:,.0f} env steps/s, "
      f"{sps['groups'] / sps['one program']:.2f}x one vmapped program"
    )
    if reference is not None:
      ratio = sps["groups"] / sps["before"]
      results[str(num_seeds)]["groups_over_before"] = ratio
      line += f", {ratio:.2f}x the reference loop's"
    print(line)
  return results


def _timer(run):
  return lambda: run()[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line (`--help` prints it and exits)."""
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.dqn",
    description=__doc__.splitlines()[0],
  )
  parser.add_argument(
    "--total_env_steps",
    type=int,
    default=50_000,
    help="Env steps per seed for every measurement.",
  )
  parser.add_argument(
    "--seed_counts",
    type=lambda text: [int(n) for n in text.split(",")],
    default=[1, 4, 16],
    help="Comma-separated numbers of vmapped seeds for parts (b)-(d).",
  )
  parser.add_argument(
    "--repeats",
    type=int,
    default=3,
    help="Timed runs per measurement (the sides alternate run by run); "
    "the fastest is kept.",
  )
  parser.add_argument(
    "--reference_commit",
    default=None,
    help=f"The commit whose {REFERENCE_PATH} part (c) times against; by "
    "default the last commit that has that file.",
  )
  parser.add_argument(
    "--no_reference",
    action="store_true",
    help="Skip the reference loop (part (c), and its column in (d)).",
  )
  parser.add_argument(
    "--output",
    default="/tmp/equivlab_dqn_benchmark.json",
    help="Where to write the results as JSON.",
  )
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  reference = None
  if not args.no_reference:
    try:
      reference = load_reference(args.reference_commit)
    except ReferenceUnavailableError as error:
      sys.exit(f"benchmarks.dqn: {error}")
  config = benchmark_config(args.total_env_steps)
  results = {
    "config": dataclasses.asdict(config),
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "cpu_count": os.cpu_count(),
    "reference_commit": None if reference is None else reference.COMMIT,
  }
  results["a"] = part_a(config, args.repeats)
  results["b"], results["c"] = part_b_and_c(
    config, args.seed_counts, args.repeats, reference
  )
  results["d"] = part_d(config, args.seed_counts, args.repeats, reference)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
