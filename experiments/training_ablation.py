r"""Seed 000 part 4: which training ideas help a small CNN on the digits?

Seed 000 trained a small CNN (a) with the softmax loss and regularisation,
(b) with He initialisation, (c) with batch norm, and (d) tried data
augmentation, Adam, group/instance/layer norm and dropout, reporting that
the (d) ideas did not help its simple network. This repeats the study on the
embedded digits over several seeds, one idea at a time:

- "mse": the baseline without the softmax loss or L2 (squared error between
  the logits and the one-hot labels; momentum SGD; LeCun-normal init).
- (a) "softmax": cross-entropy of the softmax; "softmax+l2": plus the
  penalty `l2 / 2 ||W||^2` on kernels.
- (b) "+he": softmax+l2 with He-normal initialisation.
- (c) "+bn": +he with batch norm after every convolution.
- (d) each a change of "+bn": "+shift_aug" (random shifts of up to 2 px,
  the digit analogue of seed 000's random crop; flips would change the
  digit), "+adam", "+dropout" (0.5 before the last layer), and
  "group_norm" / "instance_norm" / "layer_norm" in place of batch norm.

    python -m experiments.training_ablation --workdir=/tmp/equivlab/ablation

Writes into --workdir: results.json, table.md, loss_curves.png,
test_accuracy.png, filters_<variant>.png, and one train workdir per run
under runs/<variant>/seed<k>/.
"""

import dataclasses
import json
import pathlib
import time
import types
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags, logging

from equivlab import train, viz
from experiments import _launch

_BASE = {
  "loss": "softmax_ce",
  "l2": 0.0,
  "optimizer": "momentum",
  "learning_rate": 0.05,
  "kernel_init": "lecun",
  "norm": None,
  "augment": "none",
  "dropout_rate": 0.0,
}
_L2 = 5e-4


def _variants() -> dict[str, dict[str, Any]]:
  a = {**_BASE, "l2": _L2}
  b = {**a, "kernel_init": "he"}
  c = {**b, "norm": "batch"}
  return {
    "mse": {**_BASE, "loss": "mse"},
    "softmax": dict(_BASE),
    "softmax+l2": a,
    "+he": b,
    "+bn": c,
    "+shift_aug": {**c, "augment": "shift"},
    "+adam": {**c, "optimizer": "adam", "learning_rate": 1e-3},
    "+dropout": {**c, "dropout_rate": 0.5},
    "group_norm": {**c, "norm": "group"},
    "instance_norm": {**c, "norm": "instance"},
    "layer_norm": {**c, "norm": "layer"},
  }


VARIANTS = tuple(_variants())


@dataclasses.dataclass(frozen=True)
class AblationConfig:
  """Settings of the training ablation.

  Attributes:
    variants: names from `VARIANTS`, run in this order.
    seeds: one run per seed and variant.
    num_epochs: training epochs per run.
    batch_size: training batch size.
    features: channels of the CNN's convolution blocks.
    dense_features: width of the CNN's hidden dense layer.
    max_shift: the largest shift of "+shift_aug", in pixels.
    train_limit: use only this many training digits (None: all 4,000).
    test_limit: use only this many test digits (None: all 1,000).
    num_devices: devices of the data-parallel mesh (None: all).
    progress: show progress bars.
  """

  variants: tuple[str, ...] = VARIANTS
  seeds: tuple[int, ...] = (0, 1, 2)
  num_epochs: int = 10
  batch_size: int = 128
  features: tuple[int, ...] = (16, 32)
  dense_features: int = 64
  max_shift: int = 2
  train_limit: int | None = None
  test_limit: int | None = None
  num_devices: int | None = None
  progress: bool = True


def train_config(
  config: AblationConfig, variant: str, seed: int
) -> train.TrainConfig:
  """The `equivlab.train.TrainConfig` of one run.

  Raises:
    ValueError: if `variant` is unknown.
  """
  table = _variants()
  if variant not in table:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
  v = table[variant]
  model_kwargs = (
    ("features", tuple(config.features)),
    ("dense_features", config.dense_features),
    ("norm", v["norm"]),
    ("dropout_rate", v["dropout_rate"]),
    ("kernel_init", v["kernel_init"]),
  )
  return train.TrainConfig(
    model="cnn",
    model_kwargs=model_kwargs,
    dataset="embedded",
    train_limit=config.train_limit,
    test_limit=config.test_limit,
    num_epochs=config.num_epochs,
    batch_size=config.batch_size,
    optimizer=v["optimizer"],
    learning_rate=v["learning_rate"],
    l2=v["l2"],
    loss=v["loss"],
    augment=v["augment"],
    max_shift=config.max_shift,
    num_devices=config.num_devices,
    seed=seed,
    checkpoint_every_steps=10**9,  # only the final checkpoint.
    log_every_steps=10**9,
    progress=config.progress,
  )


def epochs_to_fraction(accuracies: Sequence[float], fraction: float) -> int:
  """The first epoch (1-based) whose accuracy reaches `fraction * final`.

  Raises:
    ValueError: for an empty curve.
  """
  if not accuracies:
    raise ValueError("accuracies must hold at least one epoch, got none.")
  target = fraction * accuracies[-1]
  return next(i + 1 for i, a in enumerate(accuracies) if a >= target)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
  """One table row per variant from the per-seed histories.

  Args:
    runs: variant -> list of `train_and_evaluate` results (one per seed).

  Returns:
    Rows with the final test accuracy mean and standard deviation over
    seeds, its change against "mse" and "+bn" where present, and the mean
    epochs to 95% of the final accuracy.
  """
  finals = {
    name: np.array([r["test_accuracy"] for r in rs])
    for name, rs in runs.items()
  }
  rows = []
  for name, rs in runs.items():
    acc = finals[name]
    row = {
      "variant": name,
      "test_acc_mean": float(acc.mean()),
      "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
      "epochs_to_95pct": float(
        np.mean(
          [
            epochs_to_fraction([h["test_accuracy"] for h in r["history"]], 0.95)
            for r in rs
          ]
        )
      ),
      "final_train_loss": float(np.mean([r["train_loss"] for r in rs])),
      "final_test_loss": float(np.mean([r["test_loss"] for r in rs])),
      "seconds_per_run": float(np.mean([r["seconds"] for r in rs])),
    }
    for ref in ("mse", "+bn"):
      if ref in finals:
        row[f"vs_{ref}"] = float(acc.mean() - finals[ref].mean())
    rows.append(row)
  return rows


def _table(rows: list[dict[str, Any]], num_seeds: int) -> str:
  def vs(r, key):
    return f"{100 * r[key]:+.2f} pt" if key in r else "-"

  return viz.format_table(
    [
      {
        "variant": r["variant"],
        f"test accuracy (mean +- std over {num_seeds} seeds)": (
          f"{100 * r['test_acc_mean']:.2f} +- {100 * r['test_acc_std']:.2f} %"
        ),
        "vs mse": vs(r, "vs_mse"),
        "vs +bn": vs(r, "vs_+bn"),
        "epochs to 95% of final": f"{r['epochs_to_95pct']:.1f}",
        "train loss": f"{r['final_train_loss']:.4f}",
        "test loss": f"{r['final_test_loss']:.4f}",
      }
      for r in rows
    ]
  )


def _mean_curve(rs: list[dict[str, Any]], key: str) -> list[float]:
  return list(np.mean([[h[key] for h in r["history"]] for r in rs], axis=0))


def plot_curves(
  runs: dict[str, list[dict[str, Any]]], workdir: str | pathlib.Path
) -> None:
  """Writes loss_curves.png (one panel per variant) and test_accuracy.png.

  Args:
    runs: variant -> per-seed results with a "history" (as in results.json).
    workdir: where the pictures go.
  """
  from matplotlib.figure import Figure  # noqa: PLC0415

  workdir = pathlib.Path(workdir)
  names = list(runs)
  cols = min(len(names), 4)
  rows = -(-len(names) // cols)
  fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
  axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
  for ax in axes[len(names) :]:
    ax.axis("off")
  for ax, name in zip(axes, names, strict=False):
    for key, style in (("train_loss", "-"), ("test_loss", "--")):
      curves = np.array([[h[key] for h in r["history"]] for r in runs[name]])
      epochs = np.arange(1, curves.shape[1] + 1)
      ax.plot(epochs, curves.mean(0), style, marker=".", label=key[:-5])
      ax.fill_between(epochs, curves.min(0), curves.max(0), alpha=0.2)
    ax.set_yscale("log")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(
    "train (running mean over the epoch) and held-out test loss; mean and "
    "range over seeds (mse: squared error, others: cross-entropy)",
    fontsize=9,
  )
  fig.savefig(workdir / "loss_curves.png", dpi=100)
  viz.plot_learning_curves(
    {name: _mean_curve(rs, "test_accuracy") for name, rs in runs.items()},
    workdir / "test_accuracy.png",
    ylabel="test accuracy (mean over seeds)",
    title="test accuracy",
  )


def run(config: AblationConfig, workdir: str | pathlib.Path) -> dict:
  """Trains every variant for every seed and writes the results.

  Args:
    config: the settings.
    workdir: the output directory (created if missing); runs that already
      finished there are resumed from their checkpoints, not retrained.

  Returns:
    The contents of results.json: the config, the table rows and, per
    variant, each seed's final metrics and per-epoch history.

  Raises:
    ValueError: for an unknown variant or no seeds.
  """
  unknown = [v for v in config.variants if v not in VARIANTS]
  if unknown or not config.variants:
    raise ValueError(
      f"variants must be a non-empty subset of {VARIANTS}, got "
      f"{config.variants}."
    )
  if not config.seeds:
    raise ValueError("seeds must hold at least one seed, got none.")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  runs: dict[str, list[dict[str, Any]]] = {v: [] for v in config.variants}
  # Seed-major, so an interrupted study has every variant for the first
  # seeds; finished runs are restored from their checkpoints on a rerun.
  for seed in config.seeds:
    for variant in config.variants:
      run_dir = workdir / "runs" / variant / f"seed{seed}"
      start = time.perf_counter()
      result = train.train_and_evaluate(
        train_config(config, variant, seed), run_dir
      )
      result["seconds"] = time.perf_counter() - start
      result["seed"] = seed
      logging.info(
        "%s seed %d: test accuracy %.4f (%.0f s)",
        variant,
        seed,
        result["test_accuracy"],
        result["seconds"],
      )
      runs[variant].append(result)
  rows = summarize(runs)
  table = _table(rows, len(config.seeds))
  print(table)
  (workdir / "table.md").write_text(table + "\n")

  plot_curves(runs, workdir)
  for variant in config.variants:
    run_dir = workdir / "runs" / variant / f"seed{config.seeds[0]}"
    _, variables = train.load_variables(run_dir)
    kernel = np.asarray(variables["params"]["Conv_0"]["kernel"])
    viz.plot_filters(
      kernel,
      workdir / f"filters_{variant.replace('+', 'plus_')}.png",
      title=f"first-layer filters, {variant}",
    )

  results = {
    "config": dataclasses.asdict(config),
    "table": rows,
    "runs": {
      name: [
        {k: v for k, v in r.items() if k != "history"}
        | {"history": r["history"]}
        for r in rs
      ]
      for name, rs in runs.items()
    },
  }
  (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
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
    "/tmp/equivlab/training_ablation",
    "Output directory.",
    flag_values=flag_values,
  )
  variants = flags.DEFINE_list(
    "variants",
    list(VARIANTS),
    f"Variants to run, from {VARIANTS}.",
    flag_values=flag_values,
  )
  seeds = flags.DEFINE_list(
    "seeds", ["0", "1", "2"], "Seeds, one run each.", flag_values=flag_values
  )
  num_epochs = flags.DEFINE_integer(
    "num_epochs", 10, "Epochs per run.", flag_values=flag_values
  )
  batch_size = flags.DEFINE_integer(
    "batch_size", 128, "Training batch size.", flag_values=flag_values
  )
  features = flags.DEFINE_list(
    "features",
    ["16", "32"],
    "Channels of the CNN's convolution blocks.",
    flag_values=flag_values,
  )
  dense = flags.DEFINE_integer(
    "dense_features",
    64,
    "Width of the CNN's hidden dense layer.",
    flag_values=flag_values,
  )
  train_limit = flags.DEFINE_integer(
    "train_limit",
    None,
    "Use only this many training digits (all if unset).",
    flag_values=flag_values,
  )
  test_limit = flags.DEFINE_integer(
    "test_limit",
    None,
    "Use only this many test digits (all if unset).",
    flag_values=flag_values,
  )
  num_devices = flags.DEFINE_integer(
    "num_devices",
    None,
    "Devices of the data-parallel mesh (all if unset).",
    flag_values=flag_values,
  )
  progress = flags.DEFINE_boolean(
    "progress", True, "Show progress bars.", flag_values=flag_values
  )
  return types.SimpleNamespace(
    workdir=workdir,
    variants=variants,
    seeds=seeds,
    num_epochs=num_epochs,
    batch_size=batch_size,
    features=features,
    dense=dense,
    train_limit=train_limit,
    test_limit=test_limit,
    num_devices=num_devices,
    progress=progress,
  )


def main(argv: Sequence[str], holders: types.SimpleNamespace) -> None:
  del argv
  config = AblationConfig(
    variants=tuple(holders.variants.value),
    seeds=tuple(int(s) for s in holders.seeds.value),
    num_epochs=holders.num_epochs.value,
    batch_size=holders.batch_size.value,
    features=tuple(int(f) for f in holders.features.value),
    dense_features=holders.dense.value,
    train_limit=holders.train_limit.value,
    test_limit=holders.test_limit.value,
    num_devices=holders.num_devices.value,
    progress=holders.progress.value,
  )
  run(config, holders.workdir.value)


if __name__ == "__main__":
  _launch.run(main, define_flags)
