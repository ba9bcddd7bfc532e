r"""Cohen & Welling 2016, Table 1, on rotated digits: Z2CNN against P4CNNs.

The paper trains on rotated MNIST (mnist-rot: digits turned by uniform
random angles) and reports test errors of 5.03% (Z2CNN), 3.21% (P4CNN with
rotation pooling) and 2.28% (P4CNN). This trains the same three networks,
over several seeds, on the embedded digits turned by uniform random angles
(train and test; bilinear, like mnist-rot), and prints per model the test
error (mean +- sample std over seeds), the parameter count and how far the
logits move when the test digits are turned by multiples of 90 degrees:
the P4CNNs are invariant to those turns by construction, the Z2CNN only
approximately.

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
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from equivlab import checks, data, gconv, train
from equivlab.analysis import viz
from equivlab.nn import models
from experiments import _common

# Cohen & Welling 2016, Table 1 (rotated MNIST), test error in percent.
PAPER_ERROR = {"z2cnn": 5.03, "p4cnn_rotpool": 3.21, "p4cnn": 2.28}
# Seed of the fixed test-set rotations of tfds data sets.
_TEST_ROTATION_SEED = 2


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions, _common.SeedOptions):
  """Settings of the rotated-digits experiment.

  The defaults finish in a few minutes on 2 CPU cores (all models and
  seeds).

  Attributes:
    models: model names for `equivlab.nn.models.get_model`.
    num_epochs: training epochs per run.
    batch_size: training batch size.
    learning_rate: peak learning rate of Adam (cosine decay to 0).
    train_limit: use only this many training digits (default: all).
    test_limit: use only this many test digits (default: all).
    num_invariance: test digits on which rot90 invariance is measured.
  """

  models: tuple[str, ...] = ("z2cnn", "p4cnn_rotpool", "p4cnn")
  num_epochs: int = 3
  batch_size: int = 64
  learning_rate: float = 3e-3
  train_limit: int | None = None
  test_limit: int | None = None
  num_invariance: int = 500

  def __post_init__(self):
    _common.check_config(self)
    unknown = [m for m in self.models if m not in models.MODEL_NAMES]
    if not self.models or unknown:
      raise ValueError(
        f"models must be names from {models.MODEL_NAMES}, got unknown "
        f"models {unknown}."
      )
    for name in ("num_epochs", "batch_size", "num_invariance"):
      checks.check_int(name, getattr(self, name), minimum=1)
    for name in ("train_limit", "test_limit"):
      checks.check_int(name, getattr(self, name), minimum=1, allow_none=True)
    checks.check_number(
      "learning_rate", self.learning_rate, minimum=0, strict_minimum=True
    )


LogitsFn = Callable[[np.ndarray], np.ndarray]


def error_percent(logits: np.ndarray, labels: np.ndarray) -> float:
  """Percentage of rows of `logits [N, K]` whose argmax is not `labels`."""
  return float(100.0 * np.mean(np.argmax(np.asarray(logits), -1) != labels))


def rot90_invariance(logits_fn: LogitsFn, images: np.ndarray) -> dict:
  """How much the logits move when the images turn by 90, 180, 270 degrees.

  Args:
    logits_fn: images `[N, H, W, C]` -> logits `[N, K]`.
    images: `[N, H, W, C]` with H == W.

  Returns:
    {"rel_error": mean over images and turns of
    `|f(rot90(x, k)) - f(x)| / |f(x)|` (Euclidean norms over the logits),
    "max_rel_error": its maximum, "pred_change": the fraction of (image,
    turn) pairs whose predicted class changes}.

  Raises:
    ValueError: if the images are not square `[N, H, H, C]`.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[1] != images.shape[2]:
    raise ValueError(
      f"images must be square [N, H, H, C], got shape {images.shape}."
    )
  base = np.asarray(logits_fn(images), np.float64)
  scale = np.linalg.norm(base, axis=-1) + 1e-12
  errors, changes = [], []
  for k in (1, 2, 3):
    turned = np.asarray(logits_fn(gconv.rotate_z2(images, k)), np.float64)
    errors.append(np.linalg.norm(turned - base, axis=-1) / scale)
    changes.append(np.argmax(turned, -1) != np.argmax(base, -1))
  errors = np.stack(errors)
  return {
    "rel_error": float(errors.mean()),
    "max_rel_error": float(errors.max()),
    "pred_change": float(np.mean(changes)),
  }


def _datasets(config: Config):
  """(train data set name, train augmentation, rotated test images, labels)."""
  if config.dataset == "embedded":
    train_name, augment = "embedded_rot", "none"
    test_x, test_y = data.load_dataset("embedded_rot", "test")
  else:
    train_name, augment = config.dataset, "rotate"
    test_x, test_y = data.load_dataset(
      config.dataset,
      "test",
      data_dir=config.data_dir,
      download=config.download,
    )
    test_x, test_y = test_x[: config.test_limit], test_y[: config.test_limit]
    key = jax.random.key(_TEST_ROTATION_SEED)
    angles = jax.random.uniform(key, (len(test_y),), maxval=2 * math.pi)
    test_x = np.asarray(data.rotate(test_x, angles))
  limit = config.test_limit
  return train_name, augment, test_x[:limit], test_y[:limit]


def _train(
  config: Config, workdir: pathlib.Path, train_name: str, augment, on_done
):
  options = {**config.train_options(), "dataset": train_name}
  base = train.TrainConfig(
    augment=augment,
    train_limit=config.train_limit,
    test_limit=config.test_limit,
    num_epochs=config.num_epochs,
    batch_size=config.batch_size,
    learning_rate=config.learning_rate,
    schedule="cosine",
    **options,
  )
  variants = {name: {"model": name} for name in config.models}
  return _common.train_grid(
    base, variants, config.seeds, workdir, on_done=on_done
  )


def _record(config: Config, name, seed, result, test_x, test_y) -> dict:
  """The record of one run: error, rot90 invariance, history."""
  logits = result.logits(test_x)
  return {
    "model": name,
    "seed": seed,
    "params": result["num_params"],
    "test_error": error_percent(logits, test_y),
    "rot90": rot90_invariance(result.logits, test_x[: config.num_invariance]),
    "history": result.history,
    "predictions": np.argmax(logits[:8], -1).tolist(),
  }


def _rows(config: Config, records: list[dict]) -> list[dict[str, Any]]:
  rows = []
  for name in config.models:
    mine = [r for r in records if r["model"] == name]
    mean, std = _common.mean_std([r["test_error"] for r in mine])
    rot90 = [r["rot90"] for r in mine]
    rows.append(
      {
        "model": name,
        "params": mine[0]["params"],
        "test error %": f"{mean:.2f} +- {std:.2f}",
        "rot90 logit rel. err": _order_of_magnitude(
          max(r["max_rel_error"] for r in rot90),
          np.mean([r["rel_error"] for r in rot90]),
        ),
        "rot90 pred. changes": "{:.3f}".format(
          np.mean([r["pred_change"] for r in rot90])
        ),
        "paper error %": (
          f"{PAPER_ERROR[name]:.2f}" if name in PAPER_ERROR else "-"
        ),
        "error_mean": mean,
        "error_std": std,
      }
    )
  return rows


def _order_of_magnitude(largest: float, mean: float) -> str:
  """Float-error levels as "< 1e-5" (they move across machines), else "%.1e".

  An invariant network's logits move by float rounding alone, whose exact
  value changes with the CPU and XLA's choice of kernels; only its order is
  reproducible.
  """
  if largest < 1e-5:
    return "< 1e-5"
  return f"{mean:.1e}"


def _table(config: Config, rows: list[dict]) -> tuple[str, float | None]:
  columns = [c for c in rows[0] if c not in ("error_mean", "error_std")]
  table = viz.format_table(rows, columns)
  table += (
    f"\n(test error: mean +- sample standard deviation over "
    f"{config.num_seeds} seeds)"
  )
  by_name = {r["model"]: r for r in rows}
  ratio = None
  if "p4cnn" in by_name and "z2cnn" in by_name:
    ratio = by_name["p4cnn"]["error_mean"] / max(
      by_name["z2cnn"]["error_mean"], 1e-12
    )
    table += (
      f"\nP4CNN error / Z2CNN error = {ratio:.3f} "
      f"(target <= 0.6; paper {2.28 / 5.03:.3f})"
    )
  return table, ratio


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
  curves = {
    name: list(
      np.mean(
        [
          [100 * (1 - h["test_accuracy"]) for h in r["history"]]
          for r in records
          if r["model"] == name
        ],
        axis=0,
      )
    )
    for name in names
  }
  viz.plot_learning_curves(
    curves,
    workdir / "curves.png",
    ylabel="test error (%), mean over seeds",
    title="Test error per epoch",
  )
  first = {r["model"]: r["predictions"] for r in records}
  n = min(8, len(test_y))
  viz.plot_images(
    test_x[:n],
    workdir / "examples.png",
    titles=[
      f"label {test_y[i]}\n" + "\n".join(f"{m}: {first[m][i]}" for m in names)
      for i in range(n)
    ],
    ncols=min(n, 4),
    title="Rotated test digits and each model's prediction (first seed)",
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains every model over every seed on rotated digits; writes the table.

  Args:
    config: the experiment's settings.
    workdir: where results.json, the PNGs and the per-run workdirs go.

  Returns:
    The contents of results.json: "config", "runs" (one record per model
    and seed), "rows" (one per model: parameters, test error mean and
    sample std in percent, rot90 invariance, the paper's error), "ratio"
    (P4CNN error over Z2CNN error, when both ran), "table" (the printed
    markdown).

  Raises:
    FileNotFoundError: if a tfds data set is not prepared.
  """
  workdir = pathlib.Path(workdir)
  train_name, augment, test_x, test_y = _datasets(config)
  done = {}  # each run is scored in its worker while the others train

  def score(name, seed, result):
    done[name, seed] = _record(config, name, seed, result, test_x, test_y)

  trained, seconds = _train(config, workdir, train_name, augment, score)
  records = [done[name, seed] for name in trained for seed in config.seeds]
  rows = _rows(config, records)
  table, ratio = _table(config, rows)
  _figures(config, workdir, rows, records, test_x, test_y)
  results = {
    "config": dataclasses.asdict(config),
    "runs": records,
    "rows": rows,
    "ratio": ratio,
    "paper_error": PAPER_ERROR,
    "table": table,
  }
  _common.write_results(workdir, results, table=table, timings=seconds)
  return results


define_flags, main = _common.entry_points(Config, run, "rotated_digits")

if __name__ == "__main__":
  _common.launch(main, define_flags)
