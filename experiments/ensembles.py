r"""Ensembles: average predictions, not parameters.

Averaging the PARAMETERS of M independently trained networks is not an
ensemble; averaging their PREDICTIONS, `g(x) = 1/M sum_m f(x; theta_m)`, is
(Goodfellow, Bengio & Courville 2016, section 7.11). This trains M CNNs on
the embedded digits, one per seed (independent initialisations and batch
orders, each through `equivlab.train.train_and_evaluate`), and for M = 1 ..
num_seeds (the first M members) compares on the test digits:

- the prediction average: the mean of the members' softmax outputs
  (`regularization.ensemble_predict`);
- the parameter average: ONE network whose parameters are the members'
  element-wise mean (`regularization.average_parameters`);
- the members alone: mean +- sample std of their accuracies and NLLs.

Accuracy and negative log-likelihood (NLL, nats per digit, of the
predicted probability of the true label) are reported. Networks trained
from different initialisations order their hidden units differently (the
permutation symmetry of a layer's units), so the parameter average mixes
unrelated units. The default CNN has no batch norm; with --norm=batch the
parameter average also averages the running means and variances, which
are then not the statistics of the averaged network's activations.

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
from equivlab.analysis import metrics, tables, viz
from equivlab.nn import models
from equivlab.training import regularization, sweeps
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


def softmax(logits: np.ndarray) -> np.ndarray:
  """Row-wise softmax of `[N, K]` logits, in float64."""
  z = np.asarray(logits, np.float64)
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Accuracy and NLL (nats, mean over rows) of probabilities `[N, K]`."""
  return {
    "accuracy": metrics.accuracy(probs, labels),
    "nll": metrics.nll(probs, labels),
  }


def _probs_fn(model: Any):
  """`f(variables, images) -> probabilities` of `model` in eval mode."""

  def probs(variables, images):
    return softmax(models.apply_in_batches(model, variables, images))

  return probs


def compare(members, test_x, test_y) -> list[dict[str, Any]]:
  """One record per ensemble size M = 1 .. len(members).

  Args:
    members: trained results (`TrainResult`s) of one model, in seed order.
    test_x: test images `[N, H, W, C]`.
    test_y: test labels `[N]`.

  Returns:
    Records with "M", "prediction_average" and "parameter_average"
    (accuracy and NLL), and "members" (each of the first M members'
    scores).
  """
  model = members[0].model
  probs = _probs_fn(model)
  variables = [m.variables for m in members]
  alone = [scores(probs(v, test_x), test_y) for v in variables]
  records = []
  for size in range(1, len(members) + 1):
    ensemble = regularization.ensemble_predict(probs, variables[:size], test_x)
    averaged = regularization.average_parameters(variables[:size])
    records.append(
      {
        "M": size,
        "prediction_average": scores(ensemble, test_y),
        "parameter_average": scores(probs(averaged, test_x), test_y),
        "members": alone[:size],
      }
    )
  return records


def _rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  rows = []
  for r in records:
    acc = metrics.mean_std([m["accuracy"] for m in r["members"]])
    nll = metrics.mean_std([m["nll"] for m in r["members"]])
    pred, param = r["prediction_average"], r["parameter_average"]
    rows.append(
      {
        "M": r["M"],
        "prediction avg acc": f"{pred['accuracy']:.4f}",
        "parameter avg acc": f"{param['accuracy']:.4f}",
        "members acc": f"{acc[0]:.4f} +- {acc[1]:.4f}",
        "prediction avg NLL": f"{pred['nll']:.4f}",
        "parameter avg NLL": f"{param['nll']:.4f}",
        "members NLL": f"{nll[0]:.4f} +- {nll[1]:.4f}",
        "members_accuracy_mean": acc[0],
        "members_accuracy_std": acc[1],
        "members_nll_mean": nll[0],
        "members_nll_std": nll[1],
      }
    )
  return rows


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
  records = compare(members, test_x, test_y)
  rows = _rows(records)
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
