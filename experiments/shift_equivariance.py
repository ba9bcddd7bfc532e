r"""Where the dense-head CNN loses translation invariance, layer by layer.

Convolutions commute with shifts, so why does a CNN with a dense head do
worse on shifted digits? This trains the "cnn" of `equivlab.nn.models`
(3x3 conv, ReLU, 2x2 stride-2 max pool, twice; then a dense hidden layer
and dense logits) on the embedded digits through
`equivlab.train.train_and_evaluate` (Adam), once per padding (circular and
zero, "SAME"), then shifts test digits circularly by `(dy, dx)` and
measures at every stage

  error = min_t ||f(shift x) - roll(f(x), t)|| / ||f(x)||

with `equivlab.analysis.probes.shift_equivariance_error` (t over all shifts
of the feature map; for the dense layers, whose outputs no shift acts on,
the invariance error `||f(shift x) - f(x)|| / ||f(x)||`). The stages are
the outputs of conv1, pool1 (ReLU + pool), conv2, pool2, dense (the hidden
layer, before its ReLU) and logits; the conv and dense outputs are read
with `probes.intermediates`, the pool outputs recomputed from them as
`max_pool(relu(conv))`, as in `models.CNN`. It also reports how often the
predicted class changes under each shift.

    python -m experiments.shift_equivariance

Writes into --workdir (default runs/shift_equivariance): results.json
(errors and best output shifts per padding, input shift and stage;
accuracies; the config), results.md (the error table), timings.json,
shift_equivariance.png (error per stage, one line per shift, one panel per
padding), and one train workdir per padding under runs/ (a rerun
resumes).
"""

import dataclasses
import functools
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks, data
from equivlab.analysis import metrics, probes, tables, viz
from equivlab.nn import models
from equivlab.training import sweeps
from experiments import _common

STAGES = ("conv1", "pool1", "conv2", "pool2", "dense", "logits")
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
    parse_shifts(self.shifts)
    checks.check_ints("features", self.features, minimum=1)
    if len(self.features) != 2:
      raise ValueError(
        f"features must have two entries, got {tuple(self.features)}."
      )
    for name in ("num_images", "dense_features"):
      checks.check_int(name, getattr(self, name), minimum=1)


def parse_shifts(values: Any) -> list[tuple[int, int]]:
  """`["0:1", "2:2"]` -> `[(0, 1), (2, 2)]`.

  Raises:
    ValueError: if `values` is empty or an entry is not `dy:dx` with
      integers.
  """
  if isinstance(values, str) or not values:
    raise ValueError(f"shifts must hold at least one 'dy:dx', got {values!r}.")
  out = []
  for text in values:
    parts = str(text).split(":")
    try:
      if len(parts) != 2:
        raise ValueError
      out.append((int(parts[0]), int(parts[1])))
    except ValueError:
      raise ValueError(
        f"shifts must be 'dy:dx' with integers, got {text!r}."
      ) from None
  return out


def stage_outputs(
  model: nn.Module, variables: dict, images: jax.Array
) -> dict[str, jax.Array]:
  """The outputs of the stages of a two-block dense-head `models.CNN`.

  Args:
    model: `models.CNN` with two conv blocks, `pool=True`, `head="dense"`
      and `norm=None` (the "cnn" defaults).
    variables: its variables.
    images: `[N, H, W, C]`.

  Returns:
    Stage name (`STAGES`) -> array: conv outputs `[N, H', W', C']` before
    the ReLU, pool outputs after ReLU and pool, the dense hidden layer's
    pre-activation `[N, D]` and the logits `[N, K]`.

  Raises:
    ValueError: if the model is not of that structure.
  """
  found = probes.intermediates(model, variables, images, train=False)
  needed = ("Conv_0", "Conv_1", "Dense_0", "Dense_1")
  if any(name not in found for name in needed) or "Conv_2" in found:
    raise ValueError(
      "expected a models.CNN with two conv blocks and a dense head "
      f"(submodules {needed}), got submodules {sorted(found)}."
    )
  if getattr(model, "norm", None) is not None or not model.pool:
    raise ValueError(
      "expected a models.CNN with norm=None and pool=True, got "
      f"norm={model.norm!r}, pool={model.pool!r}."
    )
  pool = lambda x: nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
  return {
    "conv1": found["Conv_0"],
    "pool1": pool(found["Conv_0"]),
    "conv2": found["Conv_1"],
    "pool2": pool(found["Conv_1"]),
    "dense": found["Dense_0"],
    "logits": found["Dense_1"],
  }


def layer_errors(
  model: nn.Module,
  variables: dict,
  images: jax.Array,
  shift: tuple[int, int],
) -> dict[str, dict]:
  """Shift equivariance error of every stage for one circular input shift.

  Args:
    model: a dense-head `models.CNN` (see `stage_outputs`).
    variables: its variables.
    images: `[N, H, W, C]`.
    shift: `(dy, dx)` in pixels; the images are rolled circularly.

  Returns:
    Stage -> {"error": float, "best_shift": [ty, tx]} (best_shift is
    [0, 0] for the dense stages), plus "prediction_changed": the fraction
    of images whose predicted class changes.
  """
  errors, shifts, logits = jax.device_get(
    _layer_errors(model, variables, jnp.asarray(images), jnp.asarray(shift))
  )
  out = {
    name: {
      "error": float(errors[name]),
      "best_shift": [int(v) for v in shifts[name]],
    }
    for name in STAGES
  }
  out["prediction_changed"] = metrics.changed_fraction(*logits)
  return out


@functools.partial(jax.jit, static_argnums=0)
def _layer_errors(model, variables, images, shift):
  # One compilation per model and image shape; the shift is traced.
  shifted = jnp.roll(images, (shift[0], shift[1]), axis=(1, 2))
  before = stage_outputs(model, variables, images)
  after = stage_outputs(model, variables, shifted)
  errors, shifts = {}, {}
  for name in STAGES:
    errors[name], shifts[name] = probes.shift_equivariance_error(
      before[name], after[name]
    )
  return errors, shifts, (before["logits"], after["logits"])


def _test_digits(config: Config) -> tuple[np.ndarray, np.ndarray]:
  images, labels = data.load_dataset(
    config.dataset, "test", data_dir=config.data_dir, download=config.download
  )
  return images[: config.num_images], labels[: config.num_images]


def _measure(config: Config, result, images, labels) -> dict[str, Any]:
  """Errors per shift and stage of one trained model, and its accuracies."""
  by_shift = {
    f"{dy},{dx}": layer_errors(result.model, result.variables, images, (dy, dx))
    for dy, dx in parse_shifts(config.shifts)
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
  images, labels = _test_digits(config)
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
    "stages": list(STAGES),
    "models": {
      padding: _measure(config, result, images, labels)
      for padding, (result,) in trained.items()
    },
  }
  results["table"] = _table(results)
  workdir.mkdir(parents=True, exist_ok=True)
  _plot(results, workdir / "shift_equivariance.png")
  sweeps.write_results(
    workdir, results, table=results["table"], timings=seconds
  )
  return results


def _table(results: dict) -> str:
  """The errors per padding, stage and shift (Markdown), and accuracies."""
  rows = []
  for padding, entry in results["models"].items():
    for name in (*STAGES, "prediction_changed"):
      row = {"padding": padding, "stage": name}
      for shift, errors in entry["shifts"].items():
        value = errors[name]
        if isinstance(value, dict):
          t = value["best_shift"]
          value = f"{value['error']:.2e} @({t[0]},{t[1]})"
        else:
          value = f"{value:.3f}"
        row[f"shift ({shift})"] = value
      rows.append(row)
  accuracies = ", ".join(
    f"{p}: {e['accuracy']:.4f} ({e['test_accuracy']:.4f} on the test split)"
    for p, e in results["models"].items()
  )
  return (
    tables.format_table(rows)
    + "\n\nerror @(ty,tx): relative error at the best output shift; "
    + "prediction_changed: fraction of predictions changed by the shift.\n"
    + f"accuracy on the measured digits: {accuracies}"
  )


def _plot(results: dict, path: pathlib.Path) -> None:
  """Error per stage, one line per shift, one panel per padding."""
  viz.plot_curve_panels(
    {
      f"padding {padding} (accuracy {entry['accuracy']:.3f})": {
        # Exact zeros cannot show on a log axis: floor them at 1e-9.
        f"shift ({shift})": [max(errors[n]["error"], 1e-9) for n in STAGES]
        for shift, errors in entry["shifts"].items()
      }
      for padding, entry in results["models"].items()
    },
    path,
    xticks=STAGES,
    log_y=True,
    sharey=True,
    ylabel="shift equivariance error (floor 1e-9 = exact)",
    title="Dense-head CNN: where shift equivariance is lost",
  )


define_flags, main = _common.entry_points(Config, run, "shift_equivariance")

if __name__ == "__main__":
  _common.launch(main, define_flags)
