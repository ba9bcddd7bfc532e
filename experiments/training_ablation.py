r"""Seed 000 part 4: which training ideas help a small CNN on the digits?

Seed 000 trained a small CNN (a) with the softmax loss and regularisation,
(b) with He initialisation, (c) with batch norm, and (d) tried data
augmentation, Adam, group/instance/layer norm and dropout, reporting that
the (d) ideas did not help its simple network. This repeats the study on the
digits over several seeds, one idea at a time:

- "mse": the baseline without the softmax loss or L2 (squared error between
  the logits and the one-hot labels; momentum SGD; LeCun-normal init).
- (a) "softmax": cross-entropy of the softmax; "softmax+l2": plus the
  penalty `l2 / 2 ||W||^2` on weights.
- (b) "+he": softmax+l2 with He-normal initialisation.
- (c) "+bn": +he with batch norm after every convolution.
- (d) each a change of "+bn": "+shift_aug" (random shifts of up to 2 px,
  the digit analogue of seed 000's random crop; flips would change the
  digit), "+adam", "+dropout" (0.5 before the last layer), and
  "group_norm" / "instance_norm" / "layer_norm" in place of batch norm.

    python -m experiments.training_ablation

Writes into --workdir (default runs/training_ablation): results.json,
results.md (the table: mean +- SAMPLE std over seeds), timings.json,
loss_curves.png, test_accuracy.png, filters_<variant>.png, and one train
workdir per run under runs/<variant>/seed<k>/ (a rerun resumes there).
"""

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from equivlab import checks, train
from equivlab.analysis import viz
from experiments import _common

# The baseline's settings; every variant changes some of them.
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


def _settings() -> dict[str, dict[str, Any]]:
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


VARIANTS = tuple(_settings())


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions, _common.SeedOptions):
  """Settings of the training ablation.

  Attributes:
    variants: names from `VARIANTS`, run in this order.
    num_epochs: training epochs per run.
    batch_size: training batch size.
    features: channels of the CNN's convolution blocks.
    dense_features: width of the CNN's hidden dense layer.
    max_shift: the largest shift of "+shift_aug", in pixels.
    train_limit: use only this many training digits (default: all).
    test_limit: use only this many test digits (default: all).
  """

  variants: tuple[str, ...] = VARIANTS
  num_epochs: int = 10
  batch_size: int = 128
  features: tuple[int, ...] = (16, 32)
  dense_features: int = 64
  max_shift: int = 2
  train_limit: int | None = None
  test_limit: int | None = None

  def __post_init__(self):
    _common.check_config(self)
    unknown = [v for v in self.variants if v not in VARIANTS]
    distinct = len(set(self.variants)) == len(self.variants)
    if not self.variants or unknown or not distinct:
      raise ValueError(
        f"variants must be distinct names from {VARIANTS}, got "
        f"{self.variants}" + (f" (unknown: {unknown})." if unknown else ".")
      )
    for name in ("num_epochs", "batch_size", "dense_features"):
      checks.check_int(name, getattr(self, name), minimum=1)
    checks.check_ints("features", self.features, minimum=1)
    checks.check_int("max_shift", self.max_shift, minimum=0, maximum=13)
    for name in ("train_limit", "test_limit"):
      checks.check_int(name, getattr(self, name), minimum=1, allow_none=True)


def base_config(config: Config) -> train.TrainConfig:
  """The `TrainConfig` every run starts from (a CNN, momentum SGD)."""
  return train.TrainConfig(
    **config.train_options(),
    model="cnn",
    train_limit=config.train_limit,
    test_limit=config.test_limit,
    num_epochs=config.num_epochs,
    batch_size=config.batch_size,
    max_shift=config.max_shift,
  )


def variant(config: Config, name: str) -> _common.Variant:
  """The `TrainConfig` overrides of one variant.

  Raises:
    ValueError: if `name` is not in `VARIANTS`.
  """
  checks.check_choice("variant", name, VARIANTS)
  v = _settings()[name]
  model_kwargs = {
    "features": tuple(config.features),
    "dense_features": config.dense_features,
    "norm": v["norm"],
    "dropout_rate": v["dropout_rate"],
    "kernel_init": v["kernel_init"],
  }
  names = ("optimizer", "learning_rate", "l2", "loss", "augment")
  return _common.Variant(
    {"model_kwargs": model_kwargs} | {n: v[n] for n in names}
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


def summarize(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict]:
  """One table row per variant from the per-seed results.

  Args:
    runs: variant -> one result per seed, each a mapping with the final
      "test_accuracy", "train_loss", "test_loss" and the per-epoch
      "history" (a `TrainResult` or its record in results.json).

  Returns:
    Rows with the final test accuracy's mean and SAMPLE standard deviation
    over seeds (`_common.mean_std`), its change against "mse" and "+bn"
    where present, the mean epochs to 95% of the final accuracy and the
    mean final losses.
  """
  means = {
    name: _common.mean_std([r["test_accuracy"] for r in rs])
    for name, rs in runs.items()
  }
  rows = []
  for name, rs in runs.items():
    curves = [[h["test_accuracy"] for h in r["history"]] for r in rs]
    row = {
      "variant": name,
      "test_acc_mean": means[name][0],
      "test_acc_std": means[name][1],
      "epochs_to_95pct": float(
        np.mean([epochs_to_fraction(c, 0.95) for c in curves])
      ),
      "final_train_loss": float(np.mean([r["train_loss"] for r in rs])),
      "final_test_loss": float(np.mean([r["test_loss"] for r in rs])),
    }
    for ref in ("mse", "+bn"):
      if ref in means:
        row[f"vs_{ref}"] = means[name][0] - means[ref][0]
    rows.append(row)
  return rows


def _table(rows: list[dict[str, Any]], num_seeds: int) -> str:
  def vs(r, key):
    return f"{100 * r[key]:+.2f} pt" if key in r else "-"

  table = viz.format_table(
    [
      {
        "variant": r["variant"],
        "test accuracy": (
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
  return table + (
    f"\n(test accuracy: mean +- sample standard deviation over {num_seeds} "
    "seeds)"
  )


def plot_losses(runs: Mapping[str, Sequence[Mapping]], path) -> None:
  """Writes one panel per variant: train and test loss per epoch.

  Args:
    runs: variant -> per-seed results with a "history".
    path: where the PNG goes.
  """
  from matplotlib.figure import Figure  # noqa: PLC0415

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
  fig.savefig(path, dpi=100)


def _figures(workdir: pathlib.Path, trained: Mapping[str, Sequence]) -> None:
  plot_losses(trained, workdir / "loss_curves.png")
  viz.plot_learning_curves(
    {
      name: np.mean(
        [[h["test_accuracy"] for h in r.history] for r in rs], axis=0
      ).tolist()
      for name, rs in trained.items()
    },
    workdir / "test_accuracy.png",
    ylabel="test accuracy (mean over seeds)",
    title="test accuracy",
  )
  for name, rs in trained.items():
    viz.plot_filters(
      np.asarray(rs[0].params["Conv_0"]["kernel"]),
      workdir / f"filters_{name.replace('+', 'plus_')}.png",
      title=f"first-layer filters, {name} (first seed)",
    )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains every variant for every seed; writes the table and figures.

  Args:
    config: the settings.
    workdir: the output directory (created if missing); runs that already
      finished there are restored from their checkpoints, not retrained.

  Returns:
    The contents of results.json: "config", "rows" (one per variant: test
    accuracy mean and sample std, changes against "mse" and "+bn", epochs
    to 95% of the final accuracy, final losses), "runs" (per variant, each
    seed's final metrics and per-epoch history) and "table".
  """
  workdir = pathlib.Path(workdir)
  variants = {name: variant(config, name) for name in config.variants}
  trained, seconds = _common.train_grid(
    base_config(config), variants, config.seeds, workdir
  )
  rows = summarize(trained)
  table = _table(rows, config.num_seeds)
  _figures(workdir, trained)
  results = {
    "config": dataclasses.asdict(config),
    "rows": rows,
    "runs": {
      name: [
        {"seed": seed, **r.metrics, "history": r.history}
        for seed, r in zip(config.seeds, rs, strict=True)
      ]
      for name, rs in trained.items()
    },
    "table": table,
  }
  _common.write_results(workdir, results, table=table, timings=seconds)
  return results


define_flags, main = _common.entry_points(Config, run, "training_ablation")

if __name__ == "__main__":
  _common.launch(main, define_flags)
