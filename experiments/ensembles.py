r"""Ensembles: average predictions, not parameters.

This trains M CNNs on the embedded digits, one per seed (independent
initialisations and batch orders, each through
`equivlab.train.train_and_evaluate`), and for M = 1 .. num_seeds (the
first M members) compares on the test digits the prediction average (the
mean of the members' softmax outputs), the parameter average (ONE network
whose parameters are the members' element-wise mean) and the members alone
(mean +- sample std), by accuracy and NLL (`equivlab.analysis.ensembling`).
The default CNN has no batch norm; with --norm=batch the parameter average
also averages the running means and variances, which are then not the
statistics of the averaged network's activations.

    python -m experiments.ensembles

Writes into --workdir (default runs/ensembles): results.json, results.md,
timings.json, accuracy.png, nll.png, and one train workdir per member under
runs/ (a rerun resumes there).
"""

import dataclasses
import pathlib
from typing import Any

import numpy as np

from equivlab import checks, train
from equivlab.analysis import ensembling, tables, viz
from equivlab.training import sweeps
from experiments import _common

NORMS = (None, "batch")


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions, _common.SeedOptions):
  """Settings of the ensembles study (Adam, cosine decay to 0).

  Attributes:
    num_seeds: members trained (one per seed); ensembles of M = 1 ..
      num_seeds members are compared.
    features: channels of the CNN's convolution blocks.
    dense_features: width of the CNN's hidden dense layer.
    norm: None (no normalisation) or "batch" (batch norm after every
      convolution; its statistics are averaged with the parameters).
  """

  num_seeds: int = 8
  features: tuple[int, ...] = (32, 64)
  dense_features: int = 128
  norm: str | None = None

  def __post_init__(self):
    _common.check_config(self)
    checks.check_int("dense_features", self.dense_features, minimum=1)
    checks.check_ints("features", self.features, minimum=1)
    norm = None if self.norm in (None, "", "none") else self.norm
    checks.check_choice("norm", norm, NORMS)
    object.__setattr__(self, "norm", norm)


def base_config(config: Config) -> train.TrainConfig:
  """The `TrainConfig` of every member (a CNN, Adam, cosine decay)."""
  return config.train_config(
    model="cnn",
    model_kwargs={
      "features": tuple(config.features),
      "dense_features": config.dense_features,
      "norm": config.norm,
    },
    schedule="cosine",
  )


def _table(config: Config, rows: list[dict[str, Any]]) -> str:
  columns = [c for c in rows[0] if not c.startswith("members_")]
  return tables.format_table(rows, columns) + (
    f"\n(test digits; members: mean +- sample standard deviation over the "
    f"first M of {config.num_seeds} CNNs trained from seeds "
    f"{config.seed}..{config.seed + config.num_seeds - 1}; NLL in nats per "
    "digit)"
  )


def _figures(config: Config, workdir: pathlib.Path, records) -> None:
  sizes = [r["M"] for r in records]
  for metric, label in (("accuracy", "test accuracy"), ("nll", "test NLL")):
    curves = {
      "prediction average (ensemble)": [
        r["prediction_average"][metric] for r in records
      ],
      "parameter average": [r["parameter_average"][metric] for r in records],
      "members (mean)": [
        float(np.mean([m[metric] for m in r["members"]])) for r in records
      ],
    }
    viz.plot_learning_curves(
      curves,
      workdir / f"{metric}.png",
      x=sizes,
      xlabel="M (networks averaged)",
      ylabel=label + (" (nats per digit)" if metric == "nll" else ""),
      title=f"Averaging predictions vs parameters of M CNNs: {label}",
      log_y=metric == "nll",
    )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains the members, compares the two averages for every M.

  Args:
    config: the study's settings.
    workdir: where results.json, the PNGs and the members' workdirs go.

  Returns:
    The contents of results.json: "config", "members" (each member's seed
    and the engine's final metrics), "records" (one per M: both averages'
    and the members' accuracy and NLL), "rows", "table".

  Raises:
    FileNotFoundError: if a tfds data set is not prepared.
  """
  workdir = pathlib.Path(workdir)
  trained, seconds = sweeps.train_grid(
    base_config(config), {"cnn": {}}, config.seeds, workdir
  )
  test_x, test_y = config.test_digits()
  members = trained["cnn"]
  records = ensembling.compare(members, test_x, test_y)
  rows = ensembling.summary_rows(records)
  table = _table(config, rows)
  _figures(config, workdir, records)
  results = {
    "config": dataclasses.asdict(config),
    "members": [
      {
        "seed": seed,
        "test_accuracy": m["test_accuracy"],
        "test_loss": m["test_loss"],
        "num_params": m["num_params"],
      }
      for seed, m in zip(config.seeds, members, strict=True)
    ],
    "records": records,
    "rows": rows,
    "table": table,
  }
  sweeps.write_results(workdir, results, table=table, timings=seconds)
  return results


define_flags, main = _common.entry_points(Config, run, "ensembles")

if __name__ == "__main__":
  _common.launch(main, define_flags)
