r"""p4m put to work: Z2CNN, P4CNN and P4MCNN on rotated and mirrored digits.

Cohen & Welling 2016 (section 8.1) trains the p4 and p4m networks on
rotated digits. Here the three networks, at matched parameter counts,
train on the embedded digits turned by uniform random angles (the
mnist-rot protocol of experiments/rotated_digits.py, `--train_set=rotated`)
or upright (`--train_set=upright`), over several seeds, and are tested on
four versions of the same 1,000 test digits: upright, mirrored (left-right),
rotated by uniform random angles, and rotated then mirrored (the same
angles, so the last two columns differ by the mirror alone).

P4MCNN is invariant to all 8 elements of p4m by construction, so its
errors on a set and on its mirror image are equal; P4CNN is invariant to
the 4 rotations only, Z2CNN to none. Per model the study measures, on the
trained networks, the relative logit change and the fraction of changed
predictions under each element (`equivlab.analysis.invariance.evaluate`).

A mirrored digit is often not a digit of its class: a mirrored 2 turned
upside down is close to a 5, and a 6 turned by 180 degrees is a 9 even
without mirrors. The labels of the mirrored sets are the original digits',
so the mirrored columns measure how a network's answer survives the mirror,
which a p4m-invariant network keeps by construction, right or wrong.

    python -m experiments.p4m_digits

Writes into --workdir (default runs/p4m_digits): results.json, results.md,
timings.json, errors.png, invariance.png, pred_changes.png, examples.png,
and one train workdir per model and seed under runs/ (a rerun resumes
there).
"""

import dataclasses
import pathlib
from typing import Any

import numpy as np

from equivlab import checks, train
from equivlab.analysis import invariance, viz
from equivlab.training import sweeps
from experiments import _common, rotated_digits

# Models with a `features` width (hidden channels, or G-channels), and the
# widths that match their parameter counts (21,750, 20,593, 21,750, 20,812).
DEFAULT_FEATURES = {"z2cnn": 20, "p4cnn": 9, "p4cnn_rotpool": 20, "p4mcnn": 6}
MODELS = tuple(DEFAULT_FEATURES)
TRAIN_SETS = ("rotated", "upright")
# The four test sets, in table order.
TEST_SETS = ("upright", "mirrored", "rotated", "rotated+mirrored")
# The test sets whose confusion matrices are kept and whose most frequent
# mistakes the table lists.
MISTAKE_SETS = ("rotated", "rotated+mirrored")
ELEMENTS = invariance.P4M_ELEMENTS
ROTATIONS, MIRRORS = ELEMENTS[1:4], ELEMENTS[4:]
# log axes cannot show 0: zero changes are drawn at this level.
_FLOOR = 1e-10


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions, _common.SeedOptions):
  """Settings of the p4m digits experiment (Adam, cosine decay to 0).

  Attributes:
    models: networks to train, from `MODELS`.
    features: the width (`features`) of each model of --models, in order
      (default: `DEFAULT_FEATURES`, matched parameter counts).
    train_set: "rotated" (digits turned by uniform random angles, like
      mnist-rot) or "upright" (the digits as they are).
    num_invariance: test digits on which the logit changes under the 8
      elements of p4m are measured.
  """

  models: tuple[str, ...] = ("z2cnn", "p4cnn", "p4mcnn")
  features: tuple[int, ...] | None = None
  train_set: str = "rotated"
  num_invariance: int = 200

  def __post_init__(self):
    _common.check_config(self)
    _common.check_names("models", self.models, MODELS)
    checks.check_choice("train_set", self.train_set, TRAIN_SETS)
    checks.check_int("num_invariance", self.num_invariance, minimum=1)
    if self.features is None:
      return
    checks.check_ints("features", self.features, minimum=1)
    if len(self.features) != len(self.models):
      raise ValueError(
        f"features must hold one width per model of --models "
        f"({len(self.models)}), got {len(self.features)}: {self.features}."
      )

  @property
  def widths(self) -> tuple[int, ...]:
    """The `features` of each model: --features, or `DEFAULT_FEATURES`."""
    if self.features is not None:
      return tuple(self.features)
    return tuple(DEFAULT_FEATURES[name] for name in self.models)


def evaluation_sets(config: Config) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The four test sets (`TEST_SETS`) of the same digits, and their labels.

  "rotated" is `rotated_digits.rotated_test_set` (the "embedded_rot" test
  split, or a tfds data set's test digits turned by fixed random angles);
  the mirrored sets are the upright and rotated ones mirrored left-right.

  Returns:
    `({name: images [N, H, W, C]}, labels [N])`, cut to --test_limit.
  """
  upright, labels = config.test_digits()
  _, rotated, _ = rotated_digits.rotated_test_set(config)
  sets = {
    "upright": upright,
    "mirrored": invariance.mirror(upright),
    "rotated": rotated,
    "rotated+mirrored": invariance.mirror(rotated),
  }
  return sets, labels


def base_config(config: Config) -> train.TrainConfig:
  """The `TrainConfig` every run starts from (model and seed set per run)."""
  embedded = config.dataset == "embedded"
  rotated = config.train_set == "rotated"
  return config.train_config(
    dataset="embedded_rot" if embedded and rotated else config.dataset,
    augment="rotate" if rotated and not embedded else "none",
    schedule="cosine",
  )


def train_models(config: Config, workdir: str | pathlib.Path):
  """Trains (or, when finished, restores) every model with every seed.

  Returns:
    `sweeps.train_grid`'s `(results, seconds)`: model name -> one
    `TrainResult` per seed, and the wall time of each run.
  """
  variants = {
    name: {"model": name, "model_kwargs": {"features": width}}
    for name, width in zip(config.models, config.widths, strict=True)
  }
  return sweeps.train_grid(base_config(config), variants, config.seeds, workdir)


def _record(config, name, seed, result, sets, labels) -> dict[str, Any]:
  """One model and seed: errors per test set, changes per p4m element."""
  probe = sets[config.train_set][: config.num_invariance]
  return {
    "model": name,
    "seed": seed,
    "params": result["num_params"],
    **invariance.evaluate(
      result.logits, sets, labels, probe, confusion_sets=MISTAKE_SETS
    ),
    "history": result.history,
  }


def _mean_over_seeds(records, name, key) -> list[float]:
  return [float(np.mean([r[key][e] for r in records[name]])) for e in ELEMENTS]


def _invariance_figures(config, workdir, records) -> None:
  """Per p4m element: relative logit change (log) and prediction changes."""
  changes = {
    name: [
      max(v, _FLOOR) for v in _mean_over_seeds(records, name, "logit_change")
    ][1:]
    for name in config.models
  }
  viz.plot_learning_curves(
    changes,
    workdir / "invariance.png",
    x=list(range(1, len(ELEMENTS))),
    log_y=True,
    xlabel=(
      "p4m element: 1-3 rot 90/180/270; 4 mirror; 5-7 mirror then "
      "rot 90/180/270"
    ),
    ylabel="relative logit change (mean over seeds)",
    title=(
      f"max|f(gx) - f(x)| / max|f(x)| on {config.num_invariance} "
      f"{config.train_set} test digits"
    ),
  )
  viz.plot_bars(
    [e.replace(" then ", "\n") for e in ELEMENTS[1:]],
    {
      name: _mean_over_seeds(records, name, "pred_change")[1:]
      for name in config.models
    },
    workdir / "pred_changes.png",
    ylabel="fraction of digits whose class changes",
    title=(
      f"Predictions moved by each p4m element ({config.train_set} test "
      f"digits, mean over {config.num_seeds} seeds)"
    ),
    value_format="{:.2f}",
  )


def _figures(config, workdir, rows, records, sets, labels) -> None:
  viz.plot_bars(
    list(config.models),
    {key: [r["stats"][key][0] for r in rows] for key in TEST_SETS},
    workdir / "errors.png",
    errors={key: [r["stats"][key][1] for r in rows] for key in TEST_SETS},
    ylabel="test error (%)",
    title=(
      f"Trained on {config.train_set} digits: test error, mean +- sample "
      f"std over {config.num_seeds} seeds"
    ),
    value_format="{:.1f}",
  )
  _invariance_figures(config, workdir, records)
  n = min(4, len(labels))
  shown = [(key, i) for key in MISTAKE_SETS for i in range(n)]
  viz.plot_predictions(
    np.stack([sets[key][i] for key, i in shown]),
    workdir / "examples.png",
    predictions={
      m: [mine[0]["predictions"][key][i] for key, i in shown]
      for m, mine in records.items()
    },
    captions=[f"{key}, label {labels[i]}" for key, i in shown],
    ncols=n,
    title=(
      f"Rotated test digits (top), mirrored (bottom); predictions of seed "
      f"{config.seed}"
    ),
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains every model over every seed; tests on four sets; writes it all.

  Args:
    config: the experiment's settings.
    workdir: where results.json, the PNGs and the per-run workdirs go.

  Returns:
    The contents of results.json: "config", "runs" (one record per model
    and seed: parameters, error per test set in percent, the relative logit
    change and the fraction of changed predictions per p4m element, the
    confusion matrices of `MISTAKE_SETS`), "rows" (one per model: the
    table's cells, "stats", the mean and sample std of the error per test
    set, and "mistakes", the most frequent (true, predicted, count) per set
    of `MISTAKE_SETS`, summed over seeds), "table" (the printed markdown).

  Raises:
    FileNotFoundError: if a tfds data set is not prepared.
  """
  workdir = pathlib.Path(workdir)
  sets, labels = evaluation_sets(config)
  trained, seconds = train_models(config, workdir)
  records = {
    name: [
      _record(config, name, seed, result, sets, labels)
      for seed, result in zip(config.seeds, results, strict=True)
    ]
    for name, results in trained.items()
  }
  rows = [
    invariance.mirror_row(name, width, records[name], TEST_SETS, MISTAKE_SETS)
    for name, width in zip(config.models, config.widths, strict=True)
  ]
  table = invariance.mirror_table(
    rows, config.train_set, config.num_seeds, config.num_invariance
  )
  _figures(config, workdir, rows, records, sets, labels)
  results = {
    "config": dataclasses.asdict(config),
    "elements": ELEMENTS,
    "runs": [r for mine in records.values() for r in mine],
    "rows": rows,
    "table": table,
  }
  sweeps.write_results(workdir, results, table=table, timings=seconds)
  return results


define_flags, main = _common.entry_points(Config, run, "p4m_digits")

if __name__ == "__main__":
  _common.launch(main, define_flags)
