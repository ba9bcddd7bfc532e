r"""Equivariance demo: a random P4CNN is rotation invariant, a plain CNN is not.

Cohen & Welling, "Group Equivariant Convolutional Networks" (ICML 2016).
Takes a real digit from the embedded MNIST subset and feeds it, rotated by
0, 90, 180 and 270 degrees (and mirrored, for `--group=p4m`), to an
untrained P4CNN and to an untrained `models.PlainCNN` of the same layout.
It measures with `equivlab.analysis.metrics.logit_changes` how far each
network's logits move,

    max_g max |logits(g x) - logits(x)| / max |logits(x)|,

and how far the P4CNN's lifted feature maps are from the rotated (and
cycled) maps of the unrotated digit, and draws those maps for each rotated
input: as the digit turns, every map turns with it AND moves one step along
the group axis (the columns cycle).

The P4CNN's errors are float32 rounding alone: their digits change with the
CPU and XLA's choice of kernels, so the table prints them as a bound
("< 1e-5") that holds across machines; results.json keeps the measured
values.

    python -m experiments.equivariance_demo

Writes into --workdir (default runs/equivariance_demo): results.json,
results.md (the table), timings.json and lifted_feature_maps.png.
"""

import dataclasses
import pathlib
import time
from typing import Any

import jax
import numpy as np

from equivlab import checks, data, groups, testing
from equivlab.analysis import invariance, metrics, tables, viz
from equivlab.training import sweeps
from experiments import _common

# Float32 rounding errors print as "< FLOAT_ERROR_BOUND": their exact value
# moves across machines, the bound does not.
FLOAT_ERROR_BOUND = 1e-5


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of the equivariance demo.

  Attributes:
    group: "p4" (rotations by 90 degrees) or "p4m" (and mirrors).
    features: G-channels per hidden layer of the P4CNN (the plain CNN has
      features * |G| channels, the same layout).
    digit_index: which test digit of the embedded data set to transform,
      in [0, 1000).
    channel: which lifted G-channel to draw, in [0, features).
    seed: seed of both networks' random weights.
    cache_dir: the embedded data set's cache directory (default: the
      user's cache directory).
  """

  group: str = "p4"
  features: int = 10
  digit_index: int = 0
  channel: int = 0
  seed: int = 0
  cache_dir: str | None = None

  def __post_init__(self):
    _common.check_config(self)
    checks.check_choice("group", self.group, ("p4", "p4m"))
    checks.check_int("features", self.features, minimum=1)
    last = data.EMBEDDED_NUM_TEST - 1
    checks.check_int("digit_index", self.digit_index, minimum=0, maximum=last)
    if checks.is_int(self.channel) and self.channel >= self.features:
      raise ValueError(
        f"channel must be an int in [0, {self.features - 1}] (a lifted "
        f"G-channel; features is {self.features}), got {self.channel}."
      )
    checks.check_int("channel", self.channel, minimum=0)
    if self.cache_dir is not None and not isinstance(self.cache_dir, str):
      raise TypeError(
        f"cache_dir must be a directory path or None, got {self.cache_dir!r}."
      )


def _measure(config: Config, digit: np.ndarray) -> dict[str, Any]:
  """Invariance of both networks' logits, equivariance of the lifting."""
  # "rbg" (XLA's RngBitGenerator): the weights only need to be random.
  key = jax.random.key(config.seed, impl="rbg")
  eq_vars, networks = invariance.equivariant_and_plain(
    key, digit, features=config.features, group=config.group
  )
  lifted = invariance.lifting_fn(eq_vars, config.group)
  rows = [
    {
      "network": name,
      "parameters": num_params,
      "errors": metrics.logit_changes(logits_fn, digit, group=config.group),
    }
    for name, logits_fn, num_params in networks
  ]
  lifting_errors = testing.equivariance_error(
    lifted, digit, group=config.group, input="image", output=config.group
  )
  return {"rows": rows, "lifting_errors": lifting_errors, "lifted": lifted}


def reported_error(error: float) -> str:
  """An error as the table prints it: below `FLOAT_ERROR_BOUND` as that
  bound, else with three significant digits (`tables.format_error`)."""
  return tables.format_error(error, bound=FLOAT_ERROR_BOUND, spec=".3g")


def _table(config: Config, rows, lifting_error: float) -> str:
  order = groups.group_order(config.group)
  what = "rotations and mirrors" if config.group == "p4m" else "rotations"
  column = f"logit change under the {order} {what}"
  table = tables.format_table(
    [
      {
        "network": r["network"],
        "parameters": f"{r['parameters']:,}",
        column: reported_error(r["invariance_error"]),
      }
      for r in rows
    ]
  )
  return (
    f"{table}\nLifting-layer equivariance error: "
    f"{reported_error(lifting_error)}. (Untrained networks, test digit "
    f"{config.digit_index}, seed {config.seed}; errors are relative, "
    f"max_g max |f(g x) - g f(x)| / max |f(x)|, float32 rounding printed "
    f"as {reported_error(0.0)}.)"
  )


def _plot(path, images, lifted, channel, group) -> None:
  """Each transformed digit beside its lifted maps, one column per index."""
  panels, titles = invariance.lifted_panels(images, lifted, channel, group)
  viz.plot_images(
    panels,
    path,
    titles=titles,
    ncols=lifted.shape[-1] + 1,
    title=(
      f"Lifted feature maps (channel {channel}, {group}): each row's maps "
      "are the first row's, rotated and cycled along the group axis"
    ),
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Measures both untrained networks on one digit; writes the table.

  Args:
    config: the demo's settings.
    workdir: where results.json, results.md, timings.json and
      lifted_feature_maps.png go (created if missing).

  Returns:
    The contents of results.json: "config", "digit_label",
    "group_elements" (`[rotation, mirror]` of each element, in the order
    of the picture's rows), "rows" (per network: parameters, the
    relative logit change per element and its maximum
    "invariance_error"), "lifting_errors" and "lifting_equivariance_error"
    (the lifting layer's relative equivariance error per element and its
    maximum), "float_error_bound" and "table".
  """
  start = time.perf_counter()
  images, labels = data.embedded_digits("test", cache_dir=config.cache_dir)
  digit = images[config.digit_index : config.digit_index + 1]
  measured = _measure(config, digit)
  rows = [
    {**r, "invariance_error": max(r["errors"].values())}
    for r in measured["rows"]
  ]
  lifting_error = max(measured["lifting_errors"].values())
  elements = groups.elements(config.group)
  batch = np.concatenate([groups.act_on_image(g, digit) for g in elements])
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _plot(
    workdir / "lifted_feature_maps.png",
    batch,
    np.asarray(measured["lifted"](batch)),
    config.channel,
    config.group,
  )
  table = _table(config, rows, lifting_error)
  results = {
    "config": dataclasses.asdict(config),
    "digit_label": int(labels[config.digit_index]),
    "group_elements": [[g.rotation, g.mirror] for g in elements],
    "rows": rows,
    "lifting_errors": measured["lifting_errors"],
    "lifting_equivariance_error": lifting_error,
    "float_error_bound": FLOAT_ERROR_BOUND,
    "table": table,
  }
  sweeps.write_results(
    workdir,
    results,
    table=table,
    timings={"seconds": time.perf_counter() - start},
  )
  return results


define_flags, main = _common.entry_points(Config, run, "equivariance_demo")

if __name__ == "__main__":
  _common.launch(main, define_flags)
