"""Many DQN agents trained in resumable chunks, checkpointed to one file.

`train_resumable(config, workdir, seeds=...)` trains one agent per seed
(agent i from `jax.random.key(seeds[i])`) in chunks of one evaluation
period (`dqn.make_loop`: the arithmetic of `dqn.make_train`, bit for bit).
After a chunk, the whole carry of every agent (networks, Adam, replay
buffer, environments) and the metrics so far are saved to
`<workdir>/checkpoint.npz` when `checkpoint_every_secs` have passed or a
multiple of `checkpoint_every_steps` env steps was crossed, and always at
the end. The same call again resumes there and returns the same metrics
as an uninterrupted run; a finished run returns at once.

- A checkpoint that cannot be read is reported in one log line and
  training starts over; one of other settings is refused, naming them.
- A run whose loss or Q-values stop being finite raises a
  `FloatingPointError` naming the seed and the env step; its last good
  checkpoint is kept.
- Where the seeds go: on several devices whose count divides the seeds,
  the seed axis is sharded over them; on one CPU device, the seeds are cut
  into vmapped groups (`equivlab.parallel.group_bounds`), one per core by
  default, each run in a thread of its own (`parallel.thread_map`). Each
  group's agents are bit for bit those of `jax.vmap` over that group.
"""

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks, parallel
from equivlab.rl.dqn.config import DQNConfig, validate_config
from equivlab.rl.dqn.loop import DQNState, make_loop
from equivlab.rl.dqn.metrics import flatten_metrics, raise_if_diverged
from equivlab.training import checkpoint, npz

__all__ = [
  "CHECKPOINT",
  "flat_metrics",
  "load_checkpoint",
  "save_checkpoint",
  "seed_placement",
  "settings_of",
  "train_resumable",
]

CHECKPOINT = "checkpoint.npz"


def settings_of(config: DQNConfig, seeds: Sequence[int]) -> dict[str, Any]:
  """What the trained agents depend on, as JSON values: a checkpoint's key.

  Args:
    config: the settings (a subclass's extra fields are left out).
    seeds: one seed per agent.

  Returns:
    The fields of `config.resolved()` that `DQNConfig` declares, and
    "seeds".
  """
  resolved = config.resolved()
  fields = {
    f.name: getattr(resolved, f.name) for f in dataclasses.fields(DQNConfig)
  }
  fields["seeds"] = [int(s) for s in seeds]
  return json.loads(json.dumps(fields))


def seed_placement(
  seeds: Sequence[int], groups: int | None = None
) -> tuple[jax.Array, Any, list[slice]]:
  """The agents' keys, the mesh to shard them over, and the seed groups.

  Args:
    seeds: one seed per agent.
    groups: vmapped groups run side by side; None to choose (below).

  Returns:
    `(keys [S], mesh, groups)`. Without `groups`, the seed axis is split
    over all devices when their count divides it (`mesh` a one-axis "data"
    mesh, one group); else, on one CPU device, cut into one group per core
    (`parallel.default_groups`); else one group on one device. With
    `groups`, that many groups on the default device.
  """
  keys = jnp.stack([jax.random.key(s) for s in seeds])
  num_seeds, num_devices = len(seeds), jax.device_count()
  if groups is None and num_devices > 1 and num_seeds % num_devices == 0:
    mesh = parallel.make_mesh(num_devices)
    keys = jax.device_put(keys, _sharding(mesh, 0))
    return keys, mesh, parallel.group_bounds(num_seeds, 1)
  if groups is None:
    on_one_cpu = num_devices == 1 and jax.default_backend() == "cpu"
    groups = parallel.default_groups(num_seeds) if on_one_cpu else 1
  return keys, None, parallel.group_bounds(num_seeds, groups)


def _sharding(mesh: Any, axis: int | None) -> Any:
  """Leaves with the seed axis (`axis` 0) split over `mesh`, else copied."""
  spec = jax.sharding.PartitionSpec
  return jax.sharding.NamedSharding(mesh, spec("data") if axis == 0 else spec())


def _jitted_loop(config: DQNConfig, mesh: Any):
  """`(loop, init(keys), chunk(keys, state, periods))`, jitted over seeds.

  The counters all seeds share stay unbatched (`loop.state_axes`), which
  makes the chunks the bits of `vmap(dqn.make_train(config))`; with a mesh
  every leaf of the carry is placed alike from chunk to chunk.
  """
  loop = make_loop(config)
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


def save_checkpoint(
  path: pathlib.Path,
  settings: dict[str, Any],
  state: DQNState,
  periods: int,
  metrics: dict[str, np.ndarray],
) -> None:
  """Writes the carry, the metrics so far and the progress atomically.

  Args:
    path: the .npz file.
    settings: `settings_of(config, seeds)`, saved with it.
    state: the carry of every agent, leaves `[S, ...]`.
    periods: evaluation periods done.
    metrics: name -> per-period metrics so far, `[S, periods, ...]`.

  Raises:
    equivlab.training.CheckpointWriteError: if it cannot be written.
  """
  npz.save_tree(
    path,
    state,
    {"settings": settings, "periods": periods},
    extra={f"metric/{k}": v for k, v in metrics.items()},
  )


def load_checkpoint(
  path: pathlib.Path, settings: dict[str, Any], template: DQNState
) -> tuple[DQNState, int, dict[str, np.ndarray]] | None:
  """The carry, periods done and metrics saved at `path`; None if none.

  The carry is placed like `template` (same devices and sharding). A
  checkpoint that cannot be read is reported in one line and None comes
  back: training starts over.

  Raises:
    ValueError: naming the differing settings, if the checkpoint was made
      with other ones.
  """
  restored = npz.load_tree(path, template, settings)
  if restored is None:
    return None
  state, meta, extra = restored
  metrics = {k.removeprefix("metric/"): v for k, v in extra.items()}
  return state, int(meta["periods"]), metrics


def flat_metrics(metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per-period metrics `[S, P, ...]` as `make_train`'s, `[S, I]`/`[S, P]`."""
  flat = jax.vmap(flatten_metrics)(metrics)
  return {k: np.asarray(v) for k, v in jax.device_get(flat).items()}


@dataclasses.dataclass(frozen=True)
class _Cadence:
  """When to checkpoint: after the last period, by env steps, by time."""

  eval_every: int
  num_periods: int
  every_steps: int | None
  every_secs: float | None

  def due(self, periods: int, saved_at: float) -> bool:
    """Whether to save after `periods` periods."""
    if periods == self.num_periods:
      return True
    steps, every = periods * self.eval_every, self.every_steps
    if every and steps // every > (steps - self.eval_every) // every:
      return True
    elapsed = time.monotonic() - saved_at
    return elapsed >= (self.every_secs or math.inf)


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


def _check_arguments(
  seeds: Sequence[int],
  groups: int | None,
  checkpoint_every_steps: int | None,
  checkpoint_every_secs: float | None,
) -> None:
  checks.check_ints("seeds", seeds, minimum=0)
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct, got {list(seeds)!r}.")
  checks.check_int(
    "groups", groups, minimum=1, maximum=len(seeds), allow_none=True
  )
  checks.check_int(
    "checkpoint_every_steps",
    checkpoint_every_steps,
    minimum=1,
    allow_none=True,
  )
  checks.check_number(
    "checkpoint_every_secs",
    checkpoint_every_secs,
    minimum=0,
    strict_minimum=True,
    allow_none=True,
  )


def train_resumable(
  config: DQNConfig,
  workdir: str | os.PathLike,
  *,
  seeds: Sequence[int],
  groups: int | None = None,
  checkpoint_every_steps: int | None = None,
  checkpoint_every_secs: float | None = 300.0,
  lock: bool = True,
) -> dict[str, Any]:
  """Trains one agent per seed, resuming from `workdir`'s checkpoint if any.

  Each group of seeds (`seed_placement`) runs its chunks in a thread of
  its own; the checkpoint holds the carry of every seed, joined along the
  seed axis, so a run may resume with another grouping.

  Args:
    config: the settings (a subclass with more fields is fine: only the
      `DQNConfig` fields and the seeds must match a checkpoint).
    workdir: where `checkpoint.npz` goes (created if missing).
    seeds: one seed per agent, distinct ints >= 0.
    groups: vmapped seed groups run side by side; None to choose (see
      `seed_placement`).
    checkpoint_every_steps: also checkpoint after the evaluation period in
      which the env steps (per agent) cross a multiple of this.
    checkpoint_every_secs: also checkpoint when this many seconds have
      passed since the last checkpoint (checked after every period).
    lock: hold `training.WorkdirLock(workdir)` during the call; pass False
      when the caller holds it.

  Returns:
    {"state": the final carry, leaves `[S, ...]` (shared counters `[]`),
    "metrics": per-period metrics `[S, P, ...]` (`flat_metrics` lays them
    out as `make_train`'s), "devices": shards of the seed axis, "groups":
    seed groups run side by side, "resumed_at": periods done before this
    call, "compile_seconds", "run_seconds": this call's}.

  Raises:
    TypeError, ValueError: for bad arguments, or a checkpoint in `workdir`
      made with other settings.
    FloatingPointError: if an agent's loss or Q-values stop being finite
      (the checkpoint before is kept).
    equivlab.training.WorkdirInUseError: if another live run holds the
      workdir.
  """
  validate_config(config)
  _check_arguments(seeds, groups, checkpoint_every_steps, checkpoint_every_secs)
  workdir = pathlib.Path(workdir)
  if not lock:
    checkpoint.ensure_directory(workdir)
    return _train(
      config,
      workdir,
      seeds,
      groups,
      checkpoint_every_steps,
      checkpoint_every_secs,
    )
  with checkpoint.WorkdirLock(workdir):
    return _train(
      config,
      workdir,
      seeds,
      groups,
      checkpoint_every_steps,
      checkpoint_every_secs,
    )


def _compiled_chunks(chunk, keys, states) -> dict:
  """The chunk program for each group's key shape, compiled once."""
  compiled = {}
  for k, state in zip(keys, states, strict=True):
    if k.shape not in compiled:
      compiled[k.shape] = chunk.lower(k, state, jnp.arange(1)).compile()
  return compiled


def _train(config, workdir, seeds, groups, every_steps, every_secs):
  keys, mesh, bounds = seed_placement(seeds, groups)
  start = time.perf_counter()
  loop, init, chunk = _jitted_loop(config, mesh)
  keys = [keys[part] for part in bounds]
  states = [init(k) for k in keys]
  compiled = _compiled_chunks(chunk, keys, states)
  compile_s = time.perf_counter() - start
  path, settings = workdir / CHECKPOINT, settings_of(config, seeds)
  restored = load_checkpoint(path, settings, _join(loop.state_axes, states))
  done, history = 0, []  # history: per-period metrics, in chunks
  if restored:
    state, done, metrics = restored
    states, history = _split(loop.state_axes, state, bounds), [metrics]
  cadence = _Cadence(
    config.eval_every, loop.num_periods, every_steps, every_secs
  )
  resumed_at, run_s = done, 0.0
  saved_at = time.monotonic()
  while done < loop.num_periods:
    start = time.perf_counter()
    states, new = _run_period(compiled, keys, states, done)
    history.append(new)
    run_s += time.perf_counter() - start
    done += 1
    if not new["finite"].all():
      raise_if_diverged(flat_metrics(_joined(history)))
    if cadence.due(done, saved_at):
      history = [_joined(history)]
      state = _join(loop.state_axes, states)
      save_checkpoint(path, settings, state, done, history[0])
      saved_at = time.monotonic()
  return {
    "state": _join(loop.state_axes, states),
    "metrics": _joined(history),
    "devices": 1 if mesh is None else jax.device_count(),
    "groups": len(bounds),
    "resumed_at": resumed_at,
    "compile_seconds": compile_s,
    "run_seconds": run_s,
  }


def _run_period(compiled, keys, states, index: int):
  """One evaluation period of every group, side by side in threads."""
  periods = jnp.arange(index, index + 1)

  def run_group(job):
    k, state = job
    state, new = compiled[k.shape](k, state, periods)
    return state, jax.device_get(new)

  outs = parallel.thread_map(
    run_group, list(zip(keys, states, strict=True)), len(keys)
  )
  new = {
    name: np.concatenate([metrics[name] for _, metrics in outs])
    for name in outs[0][1]
  }
  return [state for state, _ in outs], new
