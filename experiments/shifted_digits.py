r"""Seed 003's shifted digits: which classifiers survive moving the digit?

Seed 003 trained an MLP and a CNN with a dense head on MNIST and tested them
on the test digits moved by a few pixels: MLP 0.9488 -> 0.4037, CNN 0.9672 ->
0.594. This trains each model on the unshifted embedded digits and evaluates
it on the test digits and on the same digits shifted by up to `max_shift`
pixels along each axis (zero fill), plus a sweep over the shift amount. A
CNN whose head averages over space ("cnn_gap", circular padding, no
striding) and its p4 group-convolution twin ("p4cnn_gap") are invariant to
the shift by construction, up to the pixels the shift pushes out of the
frame; Cohen & Welling's P4CNN ("p4cnn"), which shrinks the image to 1x1
with "VALID" layers and a stride-2 pool, is not.

    python -m experiments.shifted_digits --workdir=/tmp/equivlab/shifted

Writes into --workdir: results.json, accuracy.png, shift_sweep.png,
curves.png, examples.png, and one train workdir per model under runs/.
"""

import dataclasses
import json
import pathlib
import time
import types
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags, logging

from equivlab import data, models, train, viz
from experiments import _launch

# Seed 003's measurements (MNIST, its own MLP and CNN): (test, shifted test).
SEED_003 = {"mlp": (0.9488, 0.4037), "cnn": (0.9672, 0.594)}

# Seed 003 question 2, "what could improve the MLP on shifted data?", answered
# by training: its two suggestions as named variants of a model (and one
# variant of the shift-invariant P4CNN). Each maps to
# `equivlab.train.TrainConfig` overrides; the shift augmentation uses the
# experiment's own --max_shift.
VARIANTS = {
  "mlp+shift_aug": {"model": "mlp", "augment": "shift"},
  "mlp_wide": {
    "model": "mlp",
    "model_kwargs": (("hidden_sizes", (1024, 1024)),),
  },
  # Invariant to shifts but not to rot90: tells a 6 from a 9.
  "p4cnn_gap+orientation": {
    "model": "p4cnn_gap",
    "model_kwargs": (("pool_group", False),),
  },
}


@dataclasses.dataclass(frozen=True)
class ShiftedConfig:
  """Settings of the shifted-digits experiment.

  Attributes:
    models: model names for `equivlab.models.get_model`, or names from
      `VARIANTS` (a model trained with other settings).
    max_shift: test digits move by up to this many pixels along each axis.
    num_epochs: training epochs per model.
    batch_size: training batch size.
    learning_rate: Adam's (peak) learning rate.
    schedule: the learning-rate schedule (`equivlab.train.SCHEDULES`).
    seed: seed of every run.
    train_limit: use only this many training digits (None: all 4,000).
    test_limit: use only this many test digits (None: all 1,000).
    num_examples: shifted digits drawn in examples.png.
    num_devices: devices of the data-parallel mesh (None: all).
    progress: show progress bars.
  """

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
  num_epochs: int = 6
  batch_size: int = 128
  learning_rate: float = 3e-3
  schedule: str = "cosine"
  seed: int = 0
  train_limit: int | None = None
  test_limit: int | None = None
  num_examples: int = 8
  num_devices: int | None = None
  progress: bool = True


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of rows of `logits [N, K]` whose argmax is `labels [N]`."""
  return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def shift_sweep(
  logits_fn, images: np.ndarray, labels: np.ndarray, max_shift: int
) -> list[float]:
  """Accuracy on the images shifted by up to k pixels, for k = 0..max_shift.

  Args:
    logits_fn: images `[N, H, W, C]` -> logits `[N, K]`.
    images: `[N, H, W, C]`.
    labels: `[N]`.
    max_shift: the largest k.

  Returns:
    `max_shift + 1` accuracies; shift k uses the key `fold_in(key(0), k)`.
  """
  key = jax.random.key(0)
  return [
    accuracy(
      logits_fn(data.random_shift(jax.random.fold_in(key, k), images, k)),
      labels,
    )
    for k in range(max_shift + 1)
  ]


def _check(config: ShiftedConfig) -> None:
  if not config.models:
    raise ValueError("models must name at least one model, got none.")
  known = (*models.MODEL_NAMES, *VARIANTS)
  unknown = [m for m in config.models if m not in known]
  if unknown:
    raise ValueError(f"unknown models {unknown}; expected names from {known}.")
  if not isinstance(config.max_shift, int) or config.max_shift < 0:
    raise ValueError(f"max_shift must be an int >= 0, got {config.max_shift}.")


def run(config: ShiftedConfig, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains each model on unshifted digits and tests it shifted and not.

  Args:
    config: the experiment's settings.
    workdir: where results.json, the PNGs and the per-model runs go.

  Returns:
    The contents of results.json: "config", "rows" (one per model: model,
    params, test accuracy, shifted test accuracy, drop in points),
    "sweep" (accuracy per shift amount per model), "seed_003" and "table"
    (the printed markdown table).

  Raises:
    ValueError: for unknown model names or a negative shift.
  """
  _check(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  shifted_name = f"embedded_shift{config.max_shift}"
  test_x, test_y = data.load_dataset("embedded", "test")
  shift_x, _ = data.load_dataset(shifted_name, "test")
  if config.test_limit is not None:
    test_x, test_y = test_x[: config.test_limit], test_y[: config.test_limit]
    shift_x = shift_x[: config.test_limit]
  rows, sweep, curves, predictions = [], {}, {}, {}
  for name in config.models:
    start = time.perf_counter()
    run_dir = workdir / "runs" / name
    overrides = VARIANTS.get(name, {"model": name})
    if overrides.get("augment") == "shift":
      overrides = {**overrides, "max_shift": config.max_shift}
    metrics = train.train_and_evaluate(
      train.TrainConfig(
        **overrides,
        dataset="embedded",
        extra_eval_datasets=(shifted_name,),
        train_limit=config.train_limit,
        test_limit=config.test_limit,
        num_epochs=config.num_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        schedule=config.schedule,
        seed=config.seed,
        num_devices=config.num_devices,
        progress=config.progress,
        checkpoint_every_steps=10**9,
      ),
      run_dir,
    )
    train_config, variables = train.load_variables(run_dir)
    model = models.get_model(
      train_config.model,
      num_classes=train_config.num_classes,
      **train.model_kwargs_dict(train_config),
    )
    logits_fn = lambda x, m=model, v=variables: np.asarray(
      models.apply_in_batches(m, v, x)
    )
    sweep[name] = shift_sweep(logits_fn, test_x, test_y, config.max_shift)
    predictions[name] = np.argmax(logits_fn(shift_x[: config.num_examples]), -1)
    clean = metrics["test_accuracy"]
    shifted = metrics[f"{shifted_name}/test_accuracy"]
    rows.append(
      {
        "model": name,
        "params": metrics["num_params"],
        "test acc": clean,
        "shifted test acc": shifted,
        "drop (points)": f"{100 * (clean - shifted):.1f}",
        "seconds": f"{time.perf_counter() - start:.0f}",
      }
    )
    for key, label in (("test", "test"), (f"{shifted_name}/test", "shifted")):
      curves[f"{name} {label}"] = [
        h[f"{key}_accuracy"] for h in metrics["history"]
      ]
    logging.info("%s: %s", name, rows[-1])
  table = viz.format_table(rows)
  names = [r["model"] for r in rows]
  viz.plot_bars(
    names,
    {
      "test": [r["test acc"] for r in rows],
      f"shifted by <= {config.max_shift} px": [
        r["shifted test acc"] for r in rows
      ],
    },
    workdir / "accuracy.png",
    ylabel="accuracy",
    title="Embedded digits: trained unshifted, tested shifted (seed 003)",
  )
  viz.plot_learning_curves(
    sweep,
    workdir / "shift_sweep.png",
    x=list(range(config.max_shift + 1)),
    xlabel="largest shift of the test digits (pixels)",
    ylabel="test accuracy",
    title="Accuracy against the largest shift of the test digits",
  )
  viz.plot_learning_curves(
    curves,
    workdir / "curves.png",
    ylabel="accuracy",
    title="Test and shifted-test accuracy per epoch",
  )
  n = min(config.num_examples, len(shift_x))
  viz.plot_images(
    shift_x[:n],
    workdir / "examples.png",
    titles=[
      f"label {test_y[i]}\n"
      + "\n".join(f"{m}: {predictions[m][i]}" for m in names)
      for i in range(n)
    ],
    ncols=min(n, 4),
    title=f"Shifted test digits (up to {config.max_shift} px) and predictions",
  )
  results = {
    "config": dataclasses.asdict(config),
    "rows": rows,
    "sweep": sweep,
    "seed_003": {
      m: {"test acc": a, "shifted test acc": b}
      for m, (a, b) in SEED_003.items()
    },
    "table": table,
  }
  (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  print(table)
  return results


def define_flags(
  flag_values: flags.FlagValues = flags.FLAGS,
) -> types.SimpleNamespace:
  """Registers this experiment's flags; returns their holders.

  Called only when the module runs as a script (and by tests, with a fresh
  `flags.FlagValues()`), so that importing several experiments into one
  process never defines a flag such as --workdir twice.
  """
  workdir = flags.DEFINE_string(
    "workdir",
    "/tmp/equivlab/shifted_digits",
    help="Where results go.",
    flag_values=flag_values,
  )
  models = flags.DEFINE_list(
    "models",
    list(ShiftedConfig.models),
    help=f"Models to compare: models.MODEL_NAMES or {tuple(VARIANTS)}.",
    flag_values=flag_values,
  )
  max_shift = flags.DEFINE_integer(
    "max_shift",
    ShiftedConfig.max_shift,
    help="Test digits move by up to this many pixels along each axis.",
    flag_values=flag_values,
  )
  num_epochs = flags.DEFINE_integer(
    "num_epochs",
    ShiftedConfig.num_epochs,
    help="Training epochs per model.",
    flag_values=flag_values,
  )
  batch_size = flags.DEFINE_integer(
    "batch_size",
    ShiftedConfig.batch_size,
    help="Training batch size.",
    flag_values=flag_values,
  )
  learning_rate = flags.DEFINE_float(
    "learning_rate",
    ShiftedConfig.learning_rate,
    help="Adam's (peak) learning rate.",
    flag_values=flag_values,
  )
  schedule = flags.DEFINE_enum(
    "schedule",
    ShiftedConfig.schedule,
    list(train.SCHEDULES),
    help="Learning-rate schedule of every model's training.",
    flag_values=flag_values,
  )
  seed = flags.DEFINE_integer(
    "seed",
    ShiftedConfig.seed,
    help="Seed of the run: weights, data order and augmentation.",
    flag_values=flag_values,
  )
  num_devices = flags.DEFINE_integer(
    "num_devices",
    None,
    help="Devices for data parallelism (default: all).",
    flag_values=flag_values,
  )
  return types.SimpleNamespace(
    workdir=workdir,
    models=models,
    max_shift=max_shift,
    num_epochs=num_epochs,
    batch_size=batch_size,
    learning_rate=learning_rate,
    schedule=schedule,
    seed=seed,
    num_devices=num_devices,
  )


def main(argv: Sequence[str], holders: types.SimpleNamespace) -> None:
  del argv
  run(
    ShiftedConfig(
      models=tuple(holders.models.value),
      max_shift=holders.max_shift.value,
      num_epochs=holders.num_epochs.value,
      batch_size=holders.batch_size.value,
      learning_rate=holders.learning_rate.value,
      schedule=holders.schedule.value,
      seed=holders.seed.value,
      num_devices=holders.num_devices.value,
    ),
    holders.workdir.value,
  )


if __name__ == "__main__":
  _launch.run(main, define_flags)
