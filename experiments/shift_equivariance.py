r"""Where the dense-head CNN loses translation invariance, layer by layer.

Trains the "cnn" of `equivlab.nn.models` (3x3 conv, ReLU, 2x2 stride-2
max pool, twice; then a dense hidden layer and dense logits) on the
embedded digits through `equivlab.train.train_and_evaluate` (Adam), once
per padding (circular and zero, "SAME"), then shifts test digits circularly
by `(dy, dx)` and measures the error of every stage and how often the
predicted class changes (`equivlab.analysis.shift`).

    python -m experiments.shift_equivariance

Writes into --workdir (default runs/shift_equivariance): results.json
(errors and best output shifts per padding, input shift and stage;
accuracies; the config), results.md (the error table), timings.json,
shift_equivariance.png (error per stage, one line per shift, one panel per
padding), and one train workdir per padding under runs/ (a rerun
resumes).
"""

import dataclasses
import pathlib
from typing import Any

from equivlab import checks, data
from equivlab.analysis import metrics, shift, viz
from equivlab.nn import models
from equivlab.training import sweeps
from experiments import _common

DEFAULT_SHIFTS = ("0:1", "0:2", "0:3", "0:4", "1:1", "2:2")


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions):
  """Settings of the per-layer shift-equivariance study (Adam, constant).

  Attributes:
    paddings: conv paddings to compare (CIRCULAR, SAME, VALID).
    shifts: input shifts as dy:dx, comma-separated (e.g. 0:1,2:2).
    num_images: test digits the errors are measured on (the first ones).
    features: channels of the two conv blocks.
    dense_features: width of the dense hidden layer.
    test_limit: use only this many test digits for the test accuracy
      (default: all).
  """

  num_epochs: int = 10
  batch_size: int = 128
  learning_rate: float = 1e-3
  paddings: tuple[str, ...] = ("CIRCULAR", "SAME")
  shifts: tuple[str, ...] = DEFAULT_SHIFTS
  num_images: int = 500
  features: tuple[int, ...] = (32, 64)
  dense_features: int = 128

  def __post_init__(self):
    _common.check_config(self)
    _common.check_names("paddings", self.paddings, models.PADDINGS)
    shift.parse_shifts(self.shifts)
    checks.check_ints("features", self.features, minimum=1)
    if len(self.features) != 2:
      raise ValueError(
        f"features must have two entries, got {tuple(self.features)}."
      )
    for name in ("num_images", "dense_features"):
      checks.check_int(name, getattr(self, name), minimum=1)


def _measure(config: Config, result, images, labels) -> dict[str, Any]:
  """Errors per shift and stage of one trained model, and its accuracies."""
  by_shift = {
    f"{dy},{dx}": shift.layer_errors(
      result.model, result.variables, images, (dy, dx)
    )
    for dy, dx in shift.parse_shifts(config.shifts)
  }
  return {
    "test_accuracy": result["test_accuracy"],
    "accuracy": metrics.accuracy(result.logits(images), labels),
    "shifts": by_shift,
  }


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains one CNN per padding, measures every stage, writes the results.

  Args:
    config: the study's settings.
    workdir: where results.json, results.md, the PNG and the train
      workdirs go.

  Returns:
    The contents of results.json: "config", "stages", "models" (padding
    -> {"test_accuracy" (the engine's, on the test split), "accuracy" (on
    the measured digits), "shifts": "dy,dx" -> `layer_errors`}), "table".

  Raises:
    FileNotFoundError: if a tfds data set is not prepared.
  """
  workdir = pathlib.Path(workdir)
  images, labels = data.load_dataset(
    config.dataset, "test", data_dir=config.data_dir, download=config.download
  )
  images, labels = images[: config.num_images], labels[: config.num_images]
  variants = {
    padding: {
      "model_kwargs": {
        "padding": padding,
        "features": tuple(config.features),
        "dense_features": config.dense_features,
      }
    }
    for padding in config.paddings
  }
  trained, _, seconds = _common.train_variants(
    config, variants, workdir, model="cnn", optimizer="adam"
  )
  results = {
    "config": dataclasses.asdict(config),
    "stages": list(shift.STAGES),
    "models": {
      padding: _measure(config, result, images, labels)
      for padding, (result,) in trained.items()
    },
  }
  results["table"] = shift.errors_table(results["models"])
  workdir.mkdir(parents=True, exist_ok=True)
  _plot(results, workdir / "shift_equivariance.png")
  sweeps.write_results(
    workdir, results, table=results["table"], timings=seconds
  )
  return results


def _plot(results: dict, path: pathlib.Path) -> None:
  """Error per stage, one line per shift, one panel per padding."""
  viz.plot_curve_panels(
    {
      f"padding {padding} (accuracy {entry['accuracy']:.3f})": {
        # Exact zeros cannot show on a log axis: floor them at 1e-9.
        f"shift ({moved})": [
          max(errors[n]["error"], 1e-9) for n in shift.STAGES
        ]
        for moved, errors in entry["shifts"].items()
      }
      for padding, entry in results["models"].items()
    },
    path,
    xticks=shift.STAGES,
    log_y=True,
    sharey=True,
    ylabel="shift equivariance error (floor 1e-9 = exact)",
    title="Dense-head CNN: where shift equivariance is lost",
  )


define_flags, main = _common.entry_points(Config, run, "shift_equivariance")

if __name__ == "__main__":
  _common.launch(main, define_flags)
