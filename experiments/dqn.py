r"""DQN on CartPole-v1 (or any discrete gymnax env, the chain MDP, a probe).

Trains `--num_seeds` independent agents at once (agent i from
`jax.random.key(seed + i)`) with `jax.jit(jax.vmap(...))` and reports each
agent's greedy-evaluation curve, final greedy return and the env steps it
took to reach `--target_return`. Mnih et al. (2015); van Hasselt et al.
(2016); seed 004 3(c)-(d).

Where the seeds go: on several devices whose count divides `--num_seeds`,
the seed axis is sharded over them. On one CPU, the seeds are split into
`--seed_groups` vmapped groups (by default one per core, as
`dqn.seed_runner`), each run in a thread of its own: XLA:CPU runs the
learn step's batched matrix products on one thread, so one program keeps
about one core busy: on 2 cores, 4 seeds in 2 groups trained 1.75x faster.
Each group's agents are bit for bit those of `jax.vmap` over that group.

    python -m experiments.dqn

Training runs in chunks of one evaluation period (`dqn.make_loop`: the
same arithmetic as `dqn.make_train`, bit for bit). After a chunk, the whole
carry of every agent (networks, Adam, replay buffer, environments) and the
metrics so far are saved to `<workdir>/checkpoint.npz` when
`checkpoint_every_secs` have passed or a multiple of
`checkpoint_every_steps` env steps was crossed, and always at the end. The
same command again resumes there and ends with the same results.json as an
uninterrupted run (a test checks it bit for bit); a finished run returns at
once. A checkpoint that cannot be read is reported in one line and training
starts over; one of other settings is refused, naming them; a workdir in
use by a live run is refused, naming that run. A run whose loss or
Q-values stop being finite stops with one line naming the seed and the env
step, keeping its last good checkpoint.

Writes into --workdir (default runs/dqn): results.json, results.md (the
table), timings.json, learning_curve.png and checkpoint.npz.
"""

import concurrent.futures
import dataclasses
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from equivlab import checks
from equivlab.analysis import tables, viz
from equivlab.rl import dqn
from equivlab.training import checkpoint, npz
from experiments import _common

CHECKPOINT = "checkpoint.npz"
# Fields that do not change what is trained: a checkpoint made with other
# values of these is resumed.
_RESUMABLE_FIELDS = (
  "seed_groups",
  "target_return",
  "checkpoint_every_steps",
  "checkpoint_every_secs",
)


@dataclasses.dataclass(frozen=True)
class Config(dqn.DQNConfig, _common.SeedOptions):
  """Settings of the DQN experiment (the DQN fields are `dqn.DQNConfig`'s).

  The defaults train 4 CartPole-v1 agents for 300k env steps each in a few
  minutes on 2 CPU cores.

  Attributes:
    num_seeds: agents trained together under vmap.
    seed: the first agent's seed; agent i uses `jax.random.key(seed + i)`.
    seed_groups: vmapped groups of consecutive seeds trained side by side,
      each in a thread of its own; None for one per CPU core on a single
      CPU device (`dqn.seed_runner`'s default), else one. The float
      rounding of an agent may depend on its group's size; a checkpoint
      of another grouping is resumed all the same.
    target_return: the greedy return that counts as solved.
    checkpoint_every_steps: also checkpoint after the evaluation period in
      which the env steps (per agent) cross a multiple of this (runs always
      checkpoint at the end).
    checkpoint_every_secs: also checkpoint when this many seconds have
      passed since the last checkpoint (checked after every evaluation
      period).
  """

  num_seeds: int = 4
  seed_groups: int | None = None
  target_return: float = 475.0
  checkpoint_every_steps: int | None = None
  checkpoint_every_secs: float | None = 300.0

  def __post_init__(self):
    super().__post_init__()
    _common.check_config(self)
    checks.check_int(
      "seed_groups", self.seed_groups, minimum=1, allow_none=True
    )
    if self.seed_groups is not None and self.seed_groups > self.num_seeds:
      raise ValueError(
        f"seed_groups ({self.seed_groups}) must not exceed num_seeds "
        f"({self.num_seeds})."
      )
    checks.check_number("target_return", self.target_return)
    _common.check_checkpoint_cadence(self)

  def dqn_config(self) -> dqn.DQNConfig:
    """The `dqn.DQNConfig` these settings hold."""
    names = [f.name for f in dataclasses.fields(dqn.DQNConfig)]
    return dqn.DQNConfig(**{name: getattr(self, name) for name in names})


# ---------------------------------------------------------------------------
# Training in chunks of evaluation periods, with checkpoints between them.
# ---------------------------------------------------------------------------


def seed_keys(config: Config) -> tuple[jax.Array, Any, list[slice]]:
  """The agents' keys, the mesh to shard them over, and the seed groups.

  Returns:
    `(keys [num_seeds], mesh, groups)`. Without `seed_groups`, the seed
    axis is split over all devices when their count divides it (`mesh` a
    one-axis "data" mesh, one group); else, on one CPU device, cut into
    one group per core (`dqn.default_groups`); else one group on one
    device. With `seed_groups`, that many groups on the default device.
  """
  keys = jnp.stack([jax.random.key(s) for s in config.seeds])
  count = config.seed_groups
  num_devices = jax.device_count()
  if count is None and num_devices > 1 and config.num_seeds % num_devices == 0:
    from equivlab import parallel  # noqa: PLC0415

    mesh = parallel.make_mesh(num_devices)
    keys = jax.device_put(keys, _sharding(mesh, 0))
    return keys, mesh, dqn.group_bounds(config.num_seeds, 1)
  if count is None:
    on_one_cpu = num_devices == 1 and jax.default_backend() == "cpu"
    count = dqn.default_groups(config.num_seeds) if on_one_cpu else 1
  return keys, None, dqn.group_bounds(config.num_seeds, count)


def _sharding(mesh: Any, axis: int | None) -> Any:
  """Leaves with the seed axis (`axis` 0) split over `mesh`, else copied."""
  from jax.sharding import NamedSharding  # noqa: PLC0415
  from jax.sharding import PartitionSpec as P  # noqa: PLC0415

  return NamedSharding(mesh, P("data") if axis == 0 else P())


def _jitted_loop(config: Config, mesh: Any):
  """`(loop, init(keys), chunk(keys, state, periods))`, jitted over seeds.

  The counters all seeds share stay unbatched (`loop.state_axes`), which
  makes the chunks the bits of `vmap(dqn.make_train(config))`; with a mesh
  every leaf of the carry is placed alike from chunk to chunk.
  """
  loop = dqn.make_loop(config.dqn_config())
  axes = loop.state_axes
  state_sharding = metrics_sharding = None
  if mesh is not None:
    state_sharding = jax.tree.map(
      lambda a: _sharding(mesh, a), axes, is_leaf=lambda a: a is None
    )
    metrics_sharding = _sharding(mesh, 0)
  init = jax.jit(
    jax.vmap(loop.init, out_axes=axes), out_shardings=state_sharding
  )
  chunk = jax.jit(
    jax.vmap(loop.run_periods, in_axes=(0, axes, None), out_axes=(axes, 0)),
    out_shardings=(state_sharding, metrics_sharding),
  )
  return loop, init, chunk


def _settings(config: Config) -> dict[str, Any]:
  """The fields the trained agents depend on, as JSON values."""
  fields = dataclasses.asdict(config)
  return _common.to_json(
    {k: v for k, v in fields.items() if k not in _RESUMABLE_FIELDS}
  )


def save_checkpoint(
  path: pathlib.Path,
  config: Config,
  state: dqn.DQNState,
  periods: int,
  metrics: dict[str, np.ndarray],
) -> None:
  """Writes the carry, the metrics so far and the progress atomically.

  Args:
    path: the .npz file.
    config: the settings (their trained-on fields are saved with it).
    state: the carry of every agent, leaves `[num_seeds, ...]`.
    periods: evaluation periods done.
    metrics: name -> per-period metrics so far, `[num_seeds, periods, ...]`.
  """
  npz.save_tree(
    path,
    state,
    {"settings": _settings(config), "periods": periods},
    extra={f"metric/{k}": v for k, v in metrics.items()},
  )


def load_checkpoint(
  path: pathlib.Path, config: Config, template: dqn.DQNState
) -> tuple[dqn.DQNState, int, dict[str, np.ndarray]] | None:
  """The carry, periods done and metrics saved at `path`; None if none.

  The carry is placed like `template` (same devices and sharding). A
  checkpoint that cannot be read is reported in one line and training
  starts over.

  Raises:
    ValueError: if the checkpoint was made with other settings.
  """
  restored = npz.load_tree(path, template, _settings(config))
  if restored is None:
    return None
  state, meta, extra = restored
  metrics = {k.removeprefix("metric/"): v for k, v in extra.items()}
  return state, int(meta["periods"]), metrics


def flat_metrics(metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per-period metrics `[S, P, ...]` as `make_train`'s, `[S, I]`/`[S, P]`."""
  flat = jax.vmap(dqn.flatten_metrics)(metrics)
  return {k: np.asarray(v) for k, v in jax.device_get(flat).items()}


def _checkpoint_due(
  config: Config, periods: int, saved_at: float, num_periods: int
) -> bool:
  """Whether to save after `periods` periods (the last, or steps or time)."""
  if periods == num_periods:
    return True
  every = config.checkpoint_every_steps
  steps = periods * config.eval_every
  if every and steps // every > (steps - config.eval_every) // every:
    return True
  elapsed = time.monotonic() - saved_at
  return elapsed >= (config.checkpoint_every_secs or math.inf)


def _joined(history: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Chunks of per-period metrics `[S, P_i, ...]` joined along the periods."""
  return {
    k: np.concatenate([chunk[k] for chunk in history], axis=1)
    for k in history[0]
  }


def _split(axes: Any, state: Any, groups: list[slice]) -> list[Any]:
  """The carry of every seed as one carry per group (shared leaves kept)."""
  return [
    jax.tree.map(
      lambda axis, leaf, part=part: leaf if axis is None else leaf[part],
      axes,
      state,
      is_leaf=lambda a: a is None,
    )
    for part in groups
  ]


def _join(axes: Any, states: list[Any]) -> Any:
  """One carry per group as the carry of every seed (`_split`'s inverse)."""
  if len(states) == 1:
    return states[0]
  return jax.tree.map(
    lambda axis, *leaves: (
      leaves[0] if axis is None else jnp.concatenate(leaves)
    ),
    axes,
    *states,
    is_leaf=lambda a: a is None,
  )


def train_agents(config: Config, workdir: pathlib.Path) -> dict[str, Any]:
  """Trains every agent, resuming from `workdir`'s checkpoint if any.

  Each group of seeds (`seed_keys`) runs its chunks in a thread of its own;
  the checkpoint holds the carry of every seed, joined along the seed axis.

  Returns:
    {"state": the final carry, "metrics": per-period metrics `[S, P,
    ...]`, "devices": shards of the seed axis, "groups": seed groups run
    side by side, "resumed_at": periods done before this call,
    "compile_seconds", "run_seconds": this call's}.

  Raises:
    FloatingPointError: if an agent's loss or Q-values stop being finite
      (the checkpoint before is kept).
  """
  keys, mesh, groups = seed_keys(config)
  start = time.perf_counter()
  loop, init, chunk = _jitted_loop(config, mesh)
  keys = [keys[part] for part in groups]
  states = [init(k) for k in keys]
  compiled = {}
  for k, state in zip(keys, states, strict=True):
    if k.shape not in compiled:
      compiled[k.shape] = chunk.lower(k, state, jnp.arange(1)).compile()
  compile_s = time.perf_counter() - start
  path = workdir / CHECKPOINT
  axes = loop.state_axes
  restored = load_checkpoint(path, config, _join(axes, states))
  done, metrics = 0, None
  if restored:
    state, done, metrics = restored
    states = _split(axes, state, groups)
  history = [metrics] if metrics else []  # per-period metrics, in chunks
  resumed_at, saved_at, run_s = done, time.monotonic(), 0.0

  def run_group(job):
    k, state, periods = job
    state, new = compiled[k.shape](k, state, periods)
    return state, jax.device_get(new)

  with concurrent.futures.ThreadPoolExecutor(len(groups)) as pool:
    while done < loop.num_periods:
      start = time.perf_counter()
      periods = jnp.arange(done, done + 1)
      jobs = [(k, s, periods) for k, s in zip(keys, states, strict=True)]
      outs = (
        list(pool.map(run_group, jobs))
        if len(jobs) > 1
        else [run_group(jobs[0])]
      )
      states = [state for state, _ in outs]
      history.append(
        {
          name: np.concatenate([new[name] for _, new in outs])
          for name in outs[0][1]
        }
      )
      run_s += time.perf_counter() - start
      done += 1
      if not history[-1]["finite"].all():
        dqn.raise_if_diverged(flat_metrics(_joined(history)))
      if _checkpoint_due(config, done, saved_at, loop.num_periods):
        history = [_joined(history)]
        save_checkpoint(path, config, _join(axes, states), done, history[0])
        saved_at = time.monotonic()
  return {
    "state": _join(axes, states),
    "metrics": _joined(history),
    "devices": 1 if mesh is None else jax.device_count(),
    "groups": len(groups),
    "resumed_at": resumed_at,
    "compile_seconds": compile_s,
    "run_seconds": run_s,
  }


# ---------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------


def steps_to_reach(env_steps, returns, threshold):
  """The first env-step count whose return reaches `threshold`, or None."""
  hits = np.nonzero(np.asarray(returns) >= threshold)[0]
  return int(env_steps[hits[0]]) if hits.size else None


def summarize(config: Config, metrics: dict[str, np.ndarray]) -> dict:
  """The results of trained agents from their metrics `[S, I]`/`[S, P]`."""
  env_steps = np.asarray(metrics["eval_env_steps"][0])
  eval_returns = np.asarray(metrics["eval_return"])
  # Training-episode returns, averaged over each evaluation period.
  shape = (config.num_seeds, env_steps.size, -1)
  ret_sum = np.asarray(metrics["episode_return_sum"]).reshape(shape)
  episodes = np.asarray(metrics["episodes"]).reshape(shape)
  train_curve = ret_sum.sum(-1) / np.maximum(episodes.sum(-1), 1)
  steps_needed = [
    steps_to_reach(env_steps, curve, config.target_return)
    for curve in eval_returns
  ]
  return {
    "config": dataclasses.asdict(config),
    "seeds": list(config.seeds),
    "eval_env_steps": env_steps,
    "eval_returns": eval_returns,
    "train_episode_returns": train_curve,
    "final_greedy_returns": eval_returns[:, -1],
    "best_greedy_returns": eval_returns.max(1),
    "steps_to_target": steps_needed,
    "all_seeds_reached_target": all(s is not None for s in steps_needed),
  }


def _table(results: dict[str, Any]) -> str:
  target = results["config"]["target_return"]
  rows = [
    {
      "seed": seed,
      "final greedy return": f"{final:.1f}",
      "best greedy return": f"{best:.1f}",
      f"env steps to reach {target:g}": "-" if steps is None else steps,
    }
    for seed, final, best, steps in zip(
      results["seeds"],
      results["final_greedy_returns"],
      results["best_greedy_returns"],
      results["steps_to_target"],
      strict=True,
    )
  ]
  return tables.format_table(rows)


def _figure(workdir: pathlib.Path, results: dict[str, Any]) -> None:
  returns = np.asarray(results["eval_returns"])
  curves = {
    f"seed {s}": r for s, r in zip(results["seeds"], returns, strict=True)
  }
  curves["mean"] = returns.mean(0)
  target = results["config"]["target_return"]
  curves[f"target {target:g}"] = np.full(returns.shape[1], target)
  viz.plot_learning_curves(
    curves,
    workdir / "learning_curve.png",
    x=[int(s) for s in results["eval_env_steps"]],
    xlabel="env steps (per agent)",
    ylabel="greedy return (mean of eval episodes)",
    title=(f"DQN on {results['config']['env_name']}, {len(returns)} seed(s)"),
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains (or resumes) the agents; writes results, table and figure.

  Args:
    config: the settings.
    workdir: where results.json, results.md, timings.json,
      learning_curve.png and checkpoint.npz go.

  Returns:
    The contents of results.json: "config", "seeds", "devices",
    "eval_env_steps" `[E]`, "eval_returns" `[S, E]`,
    "train_episode_returns" `[S, E]`, "final_greedy_returns" and
    "best_greedy_returns" `[S]`, "steps_to_target" `[S]` (None where not
    reached), "all_seeds_reached_target" and "table".

  Raises:
    ValueError: if the workdir holds a checkpoint of other settings.
    FloatingPointError: if training diverges.
    equivlab.training.WorkdirInUseError: if another live run uses it.
    OSError: if the workdir or the checkpoint cannot be written.
  """
  workdir = pathlib.Path(workdir)
  with checkpoint.WorkdirLock(workdir):
    return _run(config, workdir)


def _run(config: Config, workdir: pathlib.Path) -> dict[str, Any]:
  logging.info(
    "DQN on %s: %d seed(s) x %d env steps.",
    config.env_name,
    config.num_seeds,
    config.total_env_steps,
  )
  trained = train_agents(config, workdir)
  results = summarize(config, flat_metrics(trained["metrics"]))
  results["devices"] = trained["devices"]
  results["table"] = _table(results)
  _figure(workdir, results)
  trained_steps = (
    config.num_seeds
    * config.eval_every
    * (len(results["eval_env_steps"]) - trained["resumed_at"])
  )
  _common.write_results(
    workdir,
    results,
    table=results["table"],
    timings={
      "compile_seconds": trained["compile_seconds"],
      "run_seconds": trained["run_seconds"],
      "env_steps_per_second": trained_steps / max(trained["run_seconds"], 1e-9),
      "resumed_at_env_steps": trained["resumed_at"] * config.eval_every,
      "seed_groups": trained["groups"],
      "jax_backend": jax.default_backend(),
    },
  )
  return _common.to_json(results)


define_flags, main = _common.entry_points(Config, run, "dqn")

if __name__ == "__main__":
  _common.launch(main, define_flags)
