r"""DQN on CartPole-v1 (or any discrete gymnax env, the chain MDP, a probe).

Trains `--num_seeds` independent agents at once (agent i from
`jax.random.key(seed + i)`) and reports each agent's greedy-evaluation
curve, final greedy return and the env steps it took to reach
`--target_return`. Mnih et al. (2015); van Hasselt, Guez & Silver (2016).

    python -m experiments.dqn

Training is `equivlab.rl.dqn.driver.train_resumable`: vmapped seed groups
side by side (`--seed_groups`), chunks of one evaluation period, the whole
carry checkpointed to `<workdir>/checkpoint.npz`. The same command again
resumes there and ends with the same results.json as an uninterrupted run;
a finished run returns at once; a checkpoint of other settings is refused,
naming them; a workdir in use by a live run is refused, naming that run;
a run whose loss or Q-values stop being finite stops with one line naming
the seed and the env step, keeping its last good checkpoint.

Writes into --workdir (default runs/dqn): results.json, results.md (the
table), timings.json, learning_curve.png and checkpoint.npz.
"""

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np
from absl import logging

from equivlab import checks
from equivlab.analysis import tables, viz
from equivlab.rl import dqn
from equivlab.rl.dqn import driver
from equivlab.training import checkpoint, sweeps
from equivlab.training.config import check_checkpoint_cadence
from experiments import _common

CHECKPOINT = driver.CHECKPOINT


@dataclasses.dataclass(frozen=True)
class Config(dqn.DQNConfig, _common.SeedOptions):
  """Settings of the DQN experiment (the DQN fields are `dqn.DQNConfig`'s).

  The defaults train 4 CartPole-v1 agents for 300k env steps each.

  Attributes:
    num_seeds: agents trained together under vmap.
    seed: the first agent's seed; agent i uses `jax.random.key(seed + i)`.
    seed_groups: vmapped groups of consecutive seeds trained side by side,
      each in a thread of its own; None for one per CPU core on a single
      CPU device, else one (`driver.seed_placement`). The float
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
    check_checkpoint_cadence(self)

  def dqn_config(self) -> dqn.DQNConfig:
    """The `dqn.DQNConfig` these settings hold."""
    names = [f.name for f in dataclasses.fields(dqn.DQNConfig)]
    return dqn.DQNConfig(**{name: getattr(self, name) for name in names})


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
    "config": dataclasses.asdict(config.resolved()),
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
  trained = driver.train_resumable(
    config.dqn_config(),
    workdir,
    seeds=config.seeds,
    groups=config.seed_groups,
    checkpoint_every_steps=config.checkpoint_every_steps,
    checkpoint_every_secs=config.checkpoint_every_secs,
    lock=False,
  )
  results = summarize(config, driver.flat_metrics(trained["metrics"]))
  results["devices"] = trained["devices"]
  results["table"] = _table(results)
  _figure(workdir, results)
  trained_steps = (
    config.num_seeds
    * config.eval_every
    * (len(results["eval_env_steps"]) - trained["resumed_at"])
  )
  sweeps.write_results(
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
  return sweeps.to_json(results)


define_flags, main = _common.entry_points(Config, run, "dqn")

if __name__ == "__main__":
  _common.launch(main, define_flags)
