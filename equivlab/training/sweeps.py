"""Sweeps: grids of training runs, each resumable, side by side in threads.

- `Variant`: one row of a study, `TrainConfig` overrides and optionally a
  module of the user's own.
- `train_grid(base, variants, seeds, workdir)`: every variant with every
  seed through `train_and_evaluate`, each run in its own workdir
  (`<workdir>/runs/<variant>/seed<seed>`), so an interrupted sweep resumes
  where it stopped. The runs go through `equivlab.parallel.thread_map`.
- `RecordStore`: one JSON record per finished cell of a sweep that does
  not go through the engine (a scanned RNN, say), written atomically and
  checked against the settings it was made with, so a rerun skips every
  finished cell.
- `write_results(workdir, results, table=...)`: a study's `results.json`
  (deterministic: the same command writes the same bytes; wall times go to
  `timings.json`) and `results.md`; `to_json` makes NumPy values JSON.
"""

import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from equivlab import checks, parallel
from equivlab.training import checkpoint, npz
from equivlab.training.config import TrainConfig

__all__ = [
  "RecordStore",
  "Variant",
  "to_json",
  "train_grid",
  "write_results",
]


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of a study: `TrainConfig` overrides and, optionally, a module.

  Attributes:
    overrides: fields of `TrainConfig` to change.
    model: a flax module to train instead of the config's named model.
  """

  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  model: Any = None


def _jobs(base, variants, seeds, workdir) -> list[tuple]:
  """`(name, seed, config, run_dir, model)` per run, seed by seed."""
  if not isinstance(base, TrainConfig):
    raise TypeError(f"base must be a TrainConfig, got {type(base).__name__}.")
  if not variants:
    raise ValueError("variants must name at least one run, got none.")
  checks.check_ints("seeds", list(seeds), minimum=0)
  jobs = []
  # Seed by seed: the runs that start together train different variants,
  # so no two of them compile the same steps at once; a variant's later
  # seeds find its steps in the persistent compilation cache.
  for seed in seeds:
    for name, variant in variants.items():
      if not isinstance(variant, Variant):
        variant = Variant(overrides=dict(variant))
      config = dataclasses.replace(base, seed=seed, **variant.overrides)
      run_dir = pathlib.Path(workdir) / "runs" / name / f"seed{seed}"
      jobs.append((name, seed, config, run_dir, variant.model))
  return jobs


def train_grid(
  base: TrainConfig,
  variants: Mapping[str, Variant | Mapping[str, Any]],
  seeds: Sequence[int],
  workdir: str | pathlib.Path,
  *,
  workers: int = 2,
  on_done: Callable[[str, int, Any], None] | None = None,
) -> tuple[dict[str, list[Any]], dict[str, list[float]]]:
  """Trains every variant with every seed through `train_and_evaluate`.

  Finished runs return from their last checkpoint at once; an interrupted
  one resumes. `workers` runs go at once, in threads: XLA runs their steps
  side by side. Each run is deterministic on its own, so the results do
  not depend on `workers`; the wall time of each run does.

  Args:
    base: the `TrainConfig` every run starts from.
    variants: name -> a `Variant` (or a mapping of overrides).
    seeds: the seeds of every variant (ints >= 0).
    workdir: the study's directory.
    workers: how many runs train at once (>= 1).
    on_done: called as `on_done(name, seed, result)` in the worker thread
      as each run finishes (not counted in its seconds): to evaluate a
      finished run while the others train.

  Returns:
    `(results, seconds)`: name -> one `TrainResult` per seed, in the order
    of `seeds`, and name -> the wall time of each run.

  Raises:
    TypeError: if `base` is not a `TrainConfig`.
    ValueError: for no variants or seeds, a bad seed, a bad override (as
      `TrainConfig` reports it) or `workers < 1`.
  """
  from equivlab.training import loop  # noqa: PLC0415 (loop imports flax)

  checks.check_int("workers", workers, minimum=1)
  jobs = _jobs(base, variants, seeds, workdir)

  def one(job):
    name, seed, config, run_dir, model = job
    start = time.perf_counter()
    result = loop.train_and_evaluate(config, run_dir, model=model)
    elapsed = time.perf_counter() - start
    logging.info(
      "%s seed %d: test accuracy %.4f (%.0f s)",
      name,
      seed,
      result["test_accuracy"],
      elapsed,
    )
    if on_done is not None:
      on_done(name, seed, result)
    return result, elapsed

  done = parallel.thread_map(one, jobs, workers)
  results: dict[str, list[Any]] = {}
  seconds: dict[str, list[float]] = {}
  for (name, *_), (result, elapsed) in zip(jobs, done, strict=True):
    results.setdefault(name, []).append(result)
    seconds.setdefault(name, []).append(elapsed)
  return results, seconds


class RecordStore:
  """One JSON record per finished cell of a sweep, under `<workdir>/runs`.

  Each record keeps the settings it was made with; reading one made with
  other settings is refused, so a rerun never mixes two sweeps.

  Args:
    workdir: the sweep's directory.
    settings: the settings every record must share (made JSON by
      `to_json`).
  """

  def __init__(self, workdir: str | pathlib.Path, settings: Mapping[str, Any]):
    self.root = pathlib.Path(workdir) / "runs"
    self.settings = json.loads(json.dumps(to_json(settings)))

  def path(self, *parts: str) -> pathlib.Path:
    """`<workdir>/runs/<part>/.../<last part>.json`."""
    return self.root.joinpath(*parts[:-1], f"{parts[-1]}.json")

  def load(self, *parts: str) -> dict[str, Any] | None:
    """The record at `path(*parts)`; None if there is none or it is damaged.

    Raises:
      ValueError: if the record was made with other settings.
    """
    path = self.path(*parts)
    if not path.exists():
      return None
    try:
      record = json.loads(path.read_text())
      saved = record.pop("settings")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
      logging.warning("%s is unreadable (%s); running it again.", path, error)
      return None
    changes = npz.setting_changes(saved, self.settings)
    if changes:
      raise ValueError(
        f"workdir {self.root.parent} holds runs of other settings "
        f"({changes}) in {path}: use another --workdir, or remove its runs/ "
        f"folder to start over."
      )
    return record

  def save(self, record: Mapping[str, Any], *parts: str) -> None:
    """Writes `record` atomically: a killed write leaves no half file.

    Raises:
      OSError: naming the path, if it cannot be written.
    """
    path = self.path(*parts)
    text = json.dumps(
      to_json({**record, "settings": self.settings}), indent=2, sort_keys=True
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with checkpoint.write_errors(f"the record {path}"):
      try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
      finally:
        tmp.unlink(missing_ok=True)


def to_json(value: Any) -> Any:
  """`value` with NumPy/JAX scalars and arrays, tuples and NaN made JSON."""
  if isinstance(value, Mapping):
    return {str(k): to_json(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [to_json(v) for v in value]
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return to_json(dataclasses.asdict(value))
  if hasattr(value, "tolist") and hasattr(value, "dtype"):
    return to_json(value.tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)  # "nan", "inf": JSON has no such numbers.
  if isinstance(value, np.generic):
    return value.item()
  return value


def write_results(
  workdir: str | pathlib.Path,
  results: Mapping[str, Any],
  *,
  table: str | None = None,
  timings: Mapping[str, Any] | None = None,
) -> pathlib.Path:
  """Writes `results.json`, `results.md` (the table) and `timings.json`.

  `results` must not hold wall times: two runs of the same command write
  the same `results.json`, byte for byte. Times go to `timings`.

  Args:
    workdir: the study's directory (created if missing).
    results: JSON-able results (see `to_json`).
    table: a Markdown table (or tables) to write and print.
    timings: seconds per run or phase.

  Returns:
    The path of results.json.

  Raises:
    OSError: naming the file that cannot be written.
  """
  workdir = pathlib.Path(workdir)
  checkpoint.ensure_directory(workdir)
  path = workdir / "results.json"
  files = {path: json.dumps(to_json(results), indent=2, sort_keys=True)}
  if table is not None:
    files[workdir / "results.md"] = table
  if timings is not None:
    files[workdir / "timings.json"] = json.dumps(to_json(timings), indent=2)
  for name, text in files.items():
    with checkpoint.write_errors(str(name)):
      name.write_text(text + "\n")
  if table is not None:
    print(table)
  return path
