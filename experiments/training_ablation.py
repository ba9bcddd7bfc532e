r"""Which training ideas help a small CNN on the digits? An ablation.

A small CNN is trained (a) with the softmax loss and regularisation, (b)
with He initialisation (He et al. 2015), (c) with batch norm (Ioffe &
Szegedy 2015), and (d) with data augmentation, Adam, group, instance or
layer norm and dropout, on the digits over several seeds, one idea at a
time:

- "mse": the baseline without the softmax loss or L2 (squared error between
  the logits and the one-hot labels; momentum SGD; LeCun-normal init).
- (a) "softmax": cross-entropy of the softmax; "softmax+l2": plus the
  penalty `l2 / 2 ||W||^2` on weights.
- (b) "+he": softmax+l2 with He-normal initialisation.
- (c) "+bn": +he with batch norm after every convolution.
- (d) each a change of "+bn": "+shift_aug" (random shifts of up to 2 px,
  the digit analogue of a random crop; flips would change the digit),
  "+adam", "+dropout" (0.5 before the last layer), and "group_norm" /
  "instance_norm" / "layer_norm" in place of batch norm.

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
from equivlab.analysis import ablation, tables, viz
from equivlab.training import sweeps
from experiments import _common

_L2 = 5e-4
_ADAM_LEARNING_RATE = 1e-3


def _settings(learning_rate: float) -> dict[str, dict[str, Any]]:
  """Variant -> its settings; each changes some of the one before."""
  base = {
    "loss": "softmax_ce",
    "l2": 0.0,
    "optimizer": "momentum",
    "learning_rate": learning_rate,
    "kernel_init": "lecun",
    "norm": None,
    "augment": "none",
    "dropout_rate": 0.0,
  }
  a = {**base, "l2": _L2}
  b = {**a, "kernel_init": "he"}
  c = {**b, "norm": "batch"}
  return {
    "mse": {**base, "loss": "mse"},
    "softmax": base,
    "softmax+l2": a,
    "+he": b,
    "+bn": c,
    "+shift_aug": {**c, "augment": "shift"},
    "+adam": {**c, "optimizer": "adam", "learning_rate": _ADAM_LEARNING_RATE},
    "+dropout": {**c, "dropout_rate": 0.5},
    "group_norm": {**c, "norm": "group"},
    "instance_norm": {**c, "norm": "instance"},
    "layer_norm": {**c, "norm": "layer"},
  }


VARIANTS = tuple(_settings(1.0))


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions, _common.SeedOptions):
  """Settings of the training ablation.

  Attributes:
    learning_rate: momentum SGD's learning rate ("+adam": Adam's 1e-3).
    variants: names from `VARIANTS`, run in this order.
    features: channels of the CNN's convolution blocks.
    dense_features: width of the CNN's hidden dense layer.
    max_shift: the largest shift of "+shift_aug", in pixels.
  """

  num_epochs: int = 10
  batch_size: int = 128
  learning_rate: float = 0.05
  variants: tuple[str, ...] = VARIANTS
  features: tuple[int, ...] = (16, 32)
  dense_features: int = 64
  max_shift: int = 2

  def __post_init__(self):
    _common.check_config(self)
    _common.check_names("variants", self.variants, VARIANTS)
    checks.check_int("dense_features", self.dense_features, minimum=1)
    checks.check_ints("features", self.features, minimum=1)
    checks.check_int("max_shift", self.max_shift, minimum=0, maximum=13)


def base_config(config: Config) -> train.TrainConfig:
  """The `TrainConfig` every run starts from (a CNN, momentum SGD)."""
  return config.train_config(
    model="cnn", optimizer="momentum", max_shift=config.max_shift
  )


def variant(config: Config, name: str) -> sweeps.Variant:
  """The `TrainConfig` overrides of one variant.

  Raises:
    ValueError: if `name` is not in `VARIANTS`.
  """
  checks.check_choice("variant", name, VARIANTS)
  v = _settings(config.learning_rate)[name]
  model_kwargs = {
    "features": tuple(config.features),
    "dense_features": config.dense_features,
    "norm": v["norm"],
    "dropout_rate": v["dropout_rate"],
    "kernel_init": v["kernel_init"],
  }
  names = ("optimizer", "learning_rate", "l2", "loss", "augment")
  return sweeps.Variant(
    {"model_kwargs": model_kwargs} | {n: v[n] for n in names}
  )


def _table(rows: list[dict[str, Any]], num_seeds: int) -> str:
  def vs(r, key):
    return f"{100 * r[key]:+.2f} pt" if key in r else "-"

  table = tables.format_table(
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


def _figures(workdir: pathlib.Path, trained: Mapping[str, Sequence]) -> None:
  losses, bands = {}, {}
  for name, rs in trained.items():
    losses[name], bands[name] = {}, {}
    for key in ("train_loss", "test_loss"):
      curves = np.array([[h[key] for h in r.history] for r in rs])
      losses[name][key[:-5]] = curves.mean(0)
      bands[name][key[:-5]] = (curves.min(0), curves.max(0))
  viz.plot_curve_panels(
    losses,
    workdir / "loss_curves.png",
    bands=bands,
    log_y=True,
    xlabel="epoch",
    ylabel="loss",
    title=(
      "train (running mean over the epoch) and held-out test loss; mean and "
      "range over seeds (mse: squared error, others: cross-entropy)"
    ),
  )
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
  trained, seconds = sweeps.train_grid(
    base_config(config), variants, config.seeds, workdir
  )
  rows = ablation.summarize(trained, references=("mse", "+bn"))
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
  sweeps.write_results(workdir, results, table=table, timings=seconds)
  return results


define_flags, main = _common.entry_points(Config, run, "training_ablation")

if __name__ == "__main__":
  _common.launch(main, define_flags)
