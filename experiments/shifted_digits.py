r"""Shifted digits: which classifiers survive moving the digit?

An MLP and a CNN with a dense head trained on MNIST lose much of their
accuracy on test digits moved by a few pixels (MLP 0.9488 -> 0.4037, CNN
0.9672 -> 0.594 in the reference measurement, `REFERENCE`). This trains
each model on the unshifted digits and evaluates it on the test digits and
on the same digits shifted by up to `max_shift` pixels along each axis
(zero fill), plus a sweep over the shift amount. A CNN whose head averages
over space ("cnn_gap", circular padding, no striding) and its p4
group-convolution twin ("p4cnn_gap") are invariant to the shift by
construction, up to the pixels the shift pushes out of the frame; Cohen &
Welling's P4CNN ("p4cnn"), which shrinks the image to 1x1 with "VALID"
layers and a stride-2 pool, is not. `VARIANTS` are named `TrainConfig`
overrides of a model: what could make the MLP robust to shifts.

    python -m experiments.shifted_digits

Writes into --workdir (default runs/shifted_digits): results.json,
results.md, timings.json, accuracy.png, shift_sweep.png, curves.png,
examples.png, and one train workdir per model and seed under runs/ (a rerun
resumes there).
"""

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from equivlab import checks, data, train
from equivlab.analysis import metrics, shift, viz
from equivlab.nn import models
from equivlab.training import sweeps
from experiments import _common

# The shifted-digits study's measurements (MNIST, its own MLP and CNN):
# (test, shifted test accuracy).
REFERENCE = {"mlp": (0.9488, 0.4037), "cnn": (0.9672, 0.594)}
# Seed of the shifted test digits of tfds data sets (the embedded digits use
# the fixed "embedded_shift<k>" set).
_SHIFT_SEED = 3

# What could make the MLP robust to shifts, answered by training: shift
# augmentation (using --max_shift), a wider network, and the shift-invariant
# P4CNN keeping the orientation (not invariant to rot90: tells a 6 from a
# 9). Any other name in --models is a model of `models.MODEL_NAMES`.
VARIANTS = {
  "mlp+shift_aug": sweeps.Variant({"model": "mlp", "augment": "shift"}),
  "mlp_wide": sweeps.Variant(
    {"model": "mlp", "model_kwargs": {"hidden_sizes": (1024, 1024)}}
  ),
  "p4cnn_gap+orientation": sweeps.Variant(
    {"model": "p4cnn_gap", "model_kwargs": {"pool_group": False}}
  ),
}


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions, _common.SeedOptions):
  """Settings of the shifted-digits experiment (Adam).

  Attributes:
    models: model names for `equivlab.nn.models.get_model`, or names from
      `VARIANTS` (a model trained with other settings).
    max_shift: test digits move by up to this many pixels along each axis;
      also the largest shift of "mlp+shift_aug"'s augmentation.
    schedule: the learning-rate schedule (`equivlab.train.SCHEDULES`).
    num_examples: shifted test digits drawn in examples.png.
  """

  num_seeds: int = 1
  num_epochs: int = 6
  batch_size: int = 128
  models: tuple[str, ...] = (
    "mlp",
    "mlp+shift_aug",
    "mlp_wide",
    "cnn",
    "cnn_gap",
    "p4cnn",
    "p4cnn_gap",
    "p4cnn_gap+orientation",
  )
  max_shift: int = 4
  schedule: str = "cosine"
  num_examples: int = 8

  def __post_init__(self):
    _common.check_config(self)
    _common.check_names("models", self.models, (*models.MODEL_NAMES, *VARIANTS))
    # 13 keeps a digit's centre in its 28x28 frame; tfds images are bounded
    # by their own size when the shifted test set is made.
    bound = data.largest_random_shift(28, 28)
    upper = bound if self.dataset == "embedded" else None
    checks.check_int("max_shift", self.max_shift, minimum=0, maximum=upper)
    checks.check_int("num_examples", self.num_examples, minimum=1)
    checks.check_choice("schedule", self.schedule, train.SCHEDULES)


def _test_sets(config: Config):
  """(test images, labels, shifted test images, the shifted set's name)."""
  test_x, test_y = config.test_digits()
  if config.dataset == "embedded":
    shifted_name = f"embedded_shift{config.max_shift}"
    return test_x, test_y, config.test_digits(shifted_name)[0], shifted_name
  key = jax.random.key(_SHIFT_SEED)
  shift_x = np.asarray(data.random_shift(key, test_x, config.max_shift))
  return test_x, test_y, shift_x, None


def _figures(config, workdir, rows, records, shift_x, test_y) -> None:
  viz.plot_bars(
    [r["model"] for r in rows],
    {
      "test": [r["test_acc_mean"] for r in rows],
      f"shifted by <= {config.max_shift} px": [
        r["shifted_acc_mean"] for r in rows
      ],
    },
    workdir / "accuracy.png",
    ylabel="accuracy",
    title="Digits trained unshifted, tested shifted",
  )
  viz.plot_learning_curves(
    {r["model"]: r["sweep"] for r in rows},
    workdir / "shift_sweep.png",
    x=list(range(config.max_shift + 1)),
    xlabel="largest shift of the test digits (pixels)",
    ylabel="test accuracy",
    title="Accuracy against the largest shift of the test digits",
  )
  curves = {}
  for name, mine in records.items():
    history = [r["history"] for r in mine]
    for key in sorted(k for k in history[0][0] if k.endswith("test_accuracy")):
      label = "shifted" if "/" in key else "test"
      curves[f"{name} {label}"] = np.mean(
        [[h[key] for h in hs] for hs in history], axis=0
      ).tolist()
  viz.plot_learning_curves(
    curves,
    workdir / "curves.png",
    ylabel="accuracy (mean over seeds)",
    title="Test and shifted-test accuracy per epoch",
  )
  n = min(config.num_examples, len(shift_x))
  viz.plot_predictions(
    shift_x[:n],
    workdir / "examples.png",
    predictions={m: mine[0]["predictions"] for m, mine in records.items()},
    captions=[f"label {y}" for y in test_y[:n]],
    title=f"Shifted test digits (up to {config.max_shift} px) and predictions",
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains each model on unshifted digits and tests it shifted and not.

  Args:
    config: the experiment's settings.
    workdir: where results.json, the PNGs and the per-run workdirs go.

  Returns:
    The contents of results.json: "config", "runs" (one record per model
    and seed: test and shifted test accuracy, the sweep, the history),
    "rows" (one per model: parameters, accuracies as mean and sample std
    over seeds, the drop in points, the mean sweep), "reference" (the
    original study's MNIST accuracies) and "table" (the markdown).

  Raises:
    FileNotFoundError: if a tfds data set is not prepared.
  """
  workdir = pathlib.Path(workdir)
  test_x, test_y, shift_x, shifted_name = _test_sets(config)

  def score(name, seed, result):
    shifted_logits = result.logits(shift_x)
    predictions = np.argmax(shifted_logits[: config.num_examples], -1)
    return {
      "model": name,
      "seed": seed,
      "params": result["num_params"],
      "test_accuracy": metrics.accuracy(result.logits(test_x), test_y),
      "shifted_accuracy": metrics.accuracy(shifted_logits, test_y),
      "sweep": metrics.accuracy_under_shifts(
        result.logits, test_x, test_y, config.max_shift
      ),
      "history": result.history,
      "predictions": predictions.tolist(),
    }

  _, records, seconds = _common.train_variants(
    config,
    {m: VARIANTS.get(m, sweeps.Variant({"model": m})) for m in config.models},
    workdir,
    score=score,
    extra_eval_datasets=(shifted_name,) if shifted_name else (),
    schedule=config.schedule,
    max_shift=config.max_shift,
  )
  rows = shift.accuracy_rows(records)
  table = shift.accuracy_table(rows, config.max_shift, config.num_seeds)
  _figures(config, workdir, rows, records, shift_x, test_y)
  results = {
    "config": dataclasses.asdict(config),
    "runs": [r for mine in records.values() for r in mine],
    "rows": rows,
    "reference": {
      m: {"test acc": a, "shifted test acc": b}
      for m, (a, b) in REFERENCE.items()
    },
    "table": table,
  }
  sweeps.write_results(workdir, results, table=table, timings=seconds)
  return results


define_flags, main = _common.entry_points(Config, run, "shifted_digits")

if __name__ == "__main__":
  _common.launch(main, define_flags)
