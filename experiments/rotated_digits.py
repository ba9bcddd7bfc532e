r"""Cohen & Welling 2016, Table 1, on rotated digits: Z2CNN against P4CNNs.

The paper trains on rotated MNIST (mnist-rot: digits turned by uniform
random angles) and reports test errors of 5.03% (Z2CNN), 3.21% (P4CNN with
rotation pooling) and 2.28% (P4CNN). This trains the same three networks,
over several seeds, on the embedded digits turned by uniform random angles
(train and test; bilinear, like mnist-rot), and prints per model the test
error (mean +- sample std over seeds), the parameter count and how far the
logits move when the test digits are turned by multiples of 90 degrees
(`equivlab.analysis.metrics.logit_changes`): the P4CNNs are invariant to
those turns by construction, the Z2CNN only approximately.

    python -m experiments.rotated_digits

`--dataset=mnist` (tfds, prepared beforehand with --download; see
BUILD_NOTES.md) trains on MNIST with random-rotation augmentation and tests
on the MNIST test digits turned by fixed uniform random angles: the paper's
setting.

Writes into --workdir (default runs/rotated_digits): results.json,
results.md, timings.json, errors.png, curves.png, examples.png, and one
train workdir per model and seed under runs/ (a rerun resumes there).
"""

import dataclasses
import math
import pathlib
from typing import Any

import jax
import numpy as np

from equivlab import checks, data
from equivlab.analysis import invariance, metrics, viz
from equivlab.nn import models
from equivlab.training import sweeps
from experiments import _common

# Cohen & Welling 2016, Table 1 (rotated MNIST), test error in percent.
PAPER_ERROR = {"z2cnn": 5.03, "p4cnn_rotpool": 3.21, "p4cnn": 2.28}
# Seed of the fixed test-set rotations of tfds data sets.
TEST_ROTATION_SEED = 2


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions, _common.SeedOptions):
  """Settings of the rotated-digits experiment (Adam, cosine decay to 0).

  Attributes:
    models: model names for `equivlab.nn.models.get_model`.
    num_invariance: test digits on which rot90 invariance is measured.
  """

  models: tuple[str, ...] = ("z2cnn", "p4cnn_rotpool", "p4cnn")
  num_invariance: int = 500

  def __post_init__(self):
    _common.check_config(self)
    _common.check_names("models", self.models, models.MODEL_NAMES)
    checks.check_int("num_invariance", self.num_invariance, minimum=1)


def rotated_test_set(config: Config) -> tuple[str, np.ndarray, np.ndarray]:
  """The rotated test digits: (their name, images, labels).

  The embedded digits' "embedded_rot" test split; for a tfds data set its
  test digits turned by fixed uniform random angles.
  """
  if config.dataset == "embedded":
    return ("embedded_rot", *config.test_digits("embedded_rot"))
  images, labels = config.test_digits()
  key = jax.random.key(TEST_ROTATION_SEED)
  angles = jax.random.uniform(key, (len(labels),), maxval=2 * math.pi)
  name = f"{config.dataset}, rotated by fixed random angles"
  return name, np.asarray(data.rotate(images, angles)), labels


def _figures(config, workdir, rows, records, test_x, test_y) -> None:
  names = [r["model"] for r in rows]
  paper = [PAPER_ERROR[n] for n in names if n in PAPER_ERROR]
  viz.plot_bars(
    names,
    {"this run": [r["error_mean"] for r in rows]}
    | ({"paper (MNIST-rot)": paper} if len(paper) == len(names) else {}),
    workdir / "errors.png",
    errors={"this run": [r["error_std"] for r in rows]},
    ylabel="test error (%)",
    title=(
      f"Rotated {config.dataset} digits: test error, mean +- sample std "
      f"over {config.num_seeds} seeds"
    ),
    value_format="{:.2f}",
  )
  viz.plot_learning_curves(
    {
      name: np.mean(
        [[100 * (1 - h["test_accuracy"]) for h in r["history"]] for r in mine],
        axis=0,
      ).tolist()
      for name, mine in records.items()
    },
    workdir / "curves.png",
    ylabel="test error (%), mean over seeds",
    title="Test error per epoch",
  )
  n = min(8, len(test_y))
  viz.plot_predictions(
    test_x[:n],
    workdir / "examples.png",
    predictions={m: mine[0]["predictions"] for m, mine in records.items()},
    captions=[f"label {y}" for y in test_y[:n]],
    title="Rotated test digits and each model's prediction (first seed)",
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains every model over every seed on rotated digits; writes the table.

  Args:
    config: the experiment's settings.
    workdir: where results.json, the PNGs and the per-run workdirs go.

  Returns:
    The contents of results.json: "config", "test_set" (the rotated test
    digits' name), "runs" (one record per model and seed), "rows" (one per
    model: parameters, test error mean and sample std in percent, rot90
    invariance, the paper's error), "ratio" (P4CNN error over Z2CNN
    error, when both ran), "paper_error" and "table" (the markdown).

  Raises:
    FileNotFoundError: if a tfds data set is not prepared.
  """
  workdir = pathlib.Path(workdir)
  test_set, test_x, test_y = rotated_test_set(config)
  probe = test_x[: config.num_invariance]

  def score(name, seed, result):
    logits = result.logits(test_x)
    return {
      "model": name,
      "seed": seed,
      "params": result["num_params"],
      "test_error": metrics.error_percent(logits, test_y),
      "rot90": invariance.rot90_invariance(result.logits, probe),
      "history": result.history,
      "predictions": np.argmax(logits[:8], -1).tolist(),
    }

  embedded = config.dataset == "embedded"
  _, records, seconds = _common.train_variants(
    config,
    {name: {"model": name} for name in config.models},
    workdir,
    score=score,
    dataset="embedded_rot" if embedded else config.dataset,
    augment="none" if embedded else "rotate",
    schedule="cosine",
  )
  rows = invariance.rotation_rows(records, PAPER_ERROR)
  table, ratio = invariance.rotation_table(
    rows, config.num_seeds, config.num_invariance, PAPER_ERROR
  )
  _figures(config, workdir, rows, records, test_x, test_y)
  results = {
    "config": dataclasses.asdict(config),
    "test_set": test_set,
    "runs": [r for mine in records.values() for r in mine],
    "rows": rows,
    "ratio": ratio,
    "paper_error": PAPER_ERROR,
    "table": table,
  }
  sweeps.write_results(workdir, results, table=table, timings=seconds)
  return results


define_flags, main = _common.entry_points(Config, run, "rotated_digits")

if __name__ == "__main__":
  _common.launch(main, define_flags)
