r"""Long-range memory: recall the first symbol after a lag, across RNN kinds.

The delayed-recall task of `equivlab.rnn.tasks`: name the opening symbol
after L distractors (chance = 1 / num_symbols). Elman, LSTM and GRU networks are
trained end to end by backpropagation through time; an echo-state network
(Jaeger 2001) keeps its random reservoir and fits only the readout, in
closed form (ridge) and by gradient descent. Also recorded: ||dL_T/dh_t||
against T - t at initialisation and after training, which decays
geometrically in the Elman net; the LSTM's additive memory cell and the
GRU's update gate keep it from vanishing.

    python -m experiments.rnn_memory

Each (lag, network) run is one jitted scan of `num_steps` Adam steps: as
it finishes, its measurements are written to
`<workdir>/runs/lag<L>/<network>.json`, so a killed sweep loses at most the
run in progress, and the same command again skips every finished run (a
workdir holding runs of other settings is refused, naming them, and so is
a workdir in use by a live run).

Writes into --workdir (default runs/rnn_memory): results.json, results.md
(the table), timings.json, accuracy_vs_lag.png, grad_norm_vs_distance.png
and the per-run records under runs/.
"""

import dataclasses
import pathlib
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from equivlab import checks
from equivlab.analysis import tables, viz
from equivlab.rnn import tasks
from equivlab.training import checkpoint, sweeps
from experiments import _common

RNN_MODELS = ("elman", "lstm", "gru")
ESN_READOUTS = ("esn_ridge", "esn_gradient")
_DISPLAY = {"elman": "Elman", "lstm": "LSTM", "gru": "GRU"} | {
  "esn_ridge": "ESN (ridge)", "esn_gradient": "ESN (gradient)"
}  # fmt: skip
# Fields that do not change what one (lag, network) run measures: a workdir
# with runs of other lags, networks or plotted lag is resumed, not refused.
_SWEEP_FIELDS = ("lags", "models", "grad_lag")
# Settings that count something, each an int >= 1.
_COUNTS = (
  "num_distractors", "hidden_size", "num_steps", "esn_size", "esn_train_size",
  "esn_readout_steps", "eval_size", "grad_lag", "grad_probe_size",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of the lag sweep.

  Attributes:
    lags: the lags L to sweep (distractor steps between the signal and
      the answer), distinct ints >= 1.
    models: the recurrent networks trained by BPTT, among elman, lstm,
      gru (the echo-state net always runs).
    num_symbols: signal symbols, the classes (chance is 1 / num_symbols).
    num_distractors: distractor symbols.
    hidden_size: hidden units of the Elman, LSTM and GRU nets.
    batch_size: sequences per Adam step.
    num_steps: Adam steps per network and lag.
    learning_rate: Adam's step size.
    clip_norm: gradients are clipped to this global norm.
    esn_size: reservoir units of the echo-state net.
    esn_radius: spectral radius of the reservoir matrix.
    esn_input_scale: input weights are uniform in [-scale, scale]; small
      keeps the reservoir near its linear regime, where its memory is
      longest.
    esn_train_size: sequences the echo-state readouts are fitted on.
    esn_readout_steps: full-batch Adam steps of the gradient readout.
    ridge_l2: the ridge penalty of the closed-form readout.
    eval_size: held-out sequences every accuracy is measured on.
    grad_lag: lag (the nearest swept one) of the gradient-norm plot.
    grad_probe_size: sequences the gradient norms are averaged over.
    seed: seed of the data, the weights and the reservoirs.
  """

  lags: tuple[int, ...] = (2, 5, 10, 20, 40, 80)
  models: tuple[str, ...] = RNN_MODELS
  num_symbols: int = 4
  num_distractors: int = 4
  hidden_size: int = 32
  batch_size: int = 64
  num_steps: int = 1200
  learning_rate: float = 3e-3
  clip_norm: float = 1.0
  esn_size: int = 200
  esn_radius: float = 0.95
  esn_input_scale: float = 0.1
  esn_train_size: int = 2048
  esn_readout_steps: int = 500
  ridge_l2: float = 1e-4
  eval_size: int = 1024
  grad_lag: int = 40
  grad_probe_size: int = 64
  seed: int = 0

  def __post_init__(self):
    _common.check_config(self)
    checks.check_ints("lags", self.lags, minimum=1)
    if len(set(self.lags)) != len(self.lags):
      raise ValueError(f"lags must be distinct, got {list(self.lags)}.")
    _common.check_names("models", self.models, RNN_MODELS)
    checks.check_int("num_symbols", self.num_symbols, minimum=2)
    for name in _COUNTS:
      checks.check_int(name, getattr(self, name), minimum=1)
    for name in ("clip_norm", "esn_radius", "esn_input_scale"):
      value = getattr(self, name)
      checks.check_number(name, value, minimum=0, strict_minimum=True)
    checks.check_number("ridge_l2", self.ridge_l2, minimum=0)

  @property
  def nearest_grad_lag(self) -> int:
    """The swept lag nearest `grad_lag` (the smaller one on a tie)."""
    return min(self.lags, key=lambda lag: (abs(lag - self.grad_lag), lag))

  @property
  def task(self) -> tasks.RecallTask:
    """The recall task of these settings."""
    return tasks.RecallTask(self.num_symbols, self.num_distractors)


def run_esn(key, lag: int, eval_batch, config: Config) -> dict[str, float]:
  """The echo-state net's readout accuracies on `eval_batch`."""
  return tasks.esn_recall(
    key, config.task, lag, eval_batch, size=config.esn_size,
    spectral_radius=config.esn_radius, input_scale=config.esn_input_scale,
    train_size=config.esn_train_size, readout_steps=config.esn_readout_steps,
    ridge_l2=config.ridge_l2,
  )  # fmt: skip


def _store(config: Config, workdir: pathlib.Path) -> sweeps.RecordStore:
  """The finished (lag, network) runs, `runs/lag<L>/<network>.json`."""
  fields = dataclasses.asdict(config)
  settings = {k: v for k, v in fields.items() if k not in _SWEEP_FIELDS}
  return sweeps.RecordStore(workdir, settings)


def _measure_rnn(config: Config, name: str, lag: int, keys, eval_batch):
  """Trains one network at one lag; its accuracy, loss and gradient norms."""
  key = jax.random.fold_in(
    jax.random.fold_in(keys["models"], lag), RNN_MODELS.index(name)
  )
  probe = config.task.batch(keys["probe"], config.grad_probe_size, lag)
  return tasks.measure(
    key, name, config.task, lag, eval_batch, probe,
    hidden_size=config.hidden_size, batch_size=config.batch_size,
    num_steps=config.num_steps, learning_rate=config.learning_rate,
    clip_norm=config.clip_norm,
  )  # fmt: skip


def _sweep(config: Config, workdir: pathlib.Path):
  """Every (lag, network) record, from disk when a run already finished.

  Returns:
    `(records, seconds)`: lag -> name ("elman", ..., "esn") -> record, and
    "lag<L>/<name>" -> wall seconds of the runs computed now.
  """
  k_eval, k_models, k_esn, k_probe = jax.random.split(
    jax.random.key(config.seed), 4
  )
  keys = {"models": k_models, "probe": k_probe}
  store, records, seconds = _store(config, workdir), {}, {}
  for lag in config.lags:
    eval_key = jax.random.fold_in(k_eval, lag)
    eval_batch = config.task.batch(eval_key, config.eval_size, lag)
    records[lag] = {}
    for name in (*config.models, "esn"):
      record = store.load(f"lag{lag}", name)
      if record is None:
        start = time.perf_counter()
        if name == "esn":
          key = jax.random.fold_in(k_esn, lag)
          record = {"accuracy": run_esn(key, lag, eval_batch, config)}
        else:
          record = _measure_rnn(config, name, lag, keys, eval_batch)
        store.save(record, f"lag{lag}", name)
        seconds[f"lag{lag}/{name}"] = time.perf_counter() - start
      logging.info("lag %d %s: %s", lag, name, record["accuracy"])
      records[lag][name] = record
  return records, seconds


# ---------------------------------------------------------------------------
# Results, table and figures.
# ---------------------------------------------------------------------------


def _results(config: Config, records) -> dict[str, Any]:
  lags = list(config.lags)
  accuracy_by = {
    name: [records[lag][name]["accuracy"] for lag in lags]
    for name in config.models
  }
  for readout in ESN_READOUTS:
    accuracy_by[readout] = [
      records[lag]["esn"]["accuracy"][readout] for lag in lags
    ]
  grad_lag = config.nearest_grad_lag
  return {
    "config": dataclasses.asdict(config),
    "lags": lags,
    "chance": 1.0 / config.num_symbols,
    "accuracy": accuracy_by,
    "final_train_loss": {
      name: [records[lag][name]["final_train_loss"] for lag in lags]
      for name in config.models
    },
    "grad_lag": grad_lag,
    "grad_norms": {
      stage: {
        name: records[grad_lag][name]["grad_norms"][stage]
        for name in config.models
      }
      for stage in ("init", "trained")
    },
  }


def _table(config: Config, results: dict[str, Any]) -> str:
  rows = [
    {"lag": lag}
    | {
      _DISPLAY[name]: f"{accs[i]:.3f}"
      for name, accs in results["accuracy"].items()
    }
    for i, lag in enumerate(results["lags"])
  ]
  return tables.format_table(rows) + (
    f"\n(test accuracy on {config.eval_size} held-out sequences, chance "
    f"{results['chance']:.3f}; hidden {config.hidden_size}, "
    f"{config.num_steps} Adam steps, one seed: {config.seed})"
  )


def _figures(workdir: pathlib.Path, results: dict[str, Any]) -> None:
  lags = results["lags"]
  curves = {_DISPLAY[n]: a for n, a in results["accuracy"].items()}
  curves["chance"] = [results["chance"]] * len(lags)
  viz.plot_learning_curves(
    curves,
    workdir / "accuracy_vs_lag.png",
    x=lags,
    xlabel="lag L (steps between the signal and the answer)",
    ylabel="test accuracy",
    title="Recall the first symbol after L distractors",
  )
  norms = {
    f"{_DISPLAY[name]} ({stage})": np.maximum(values, 1e-30)
    for stage, by_name in results["grad_norms"].items()
    for name, values in by_name.items()
  }
  viz.plot_learning_curves(
    norms,
    workdir / "grad_norm_vs_distance.png",
    x=list(range(results["grad_lag"] + 1)),
    xlabel="T - t",
    ylabel="mean ||dL_T / dh_t||",
    title=f"Gradient of the last loss back in time, lag {results['grad_lag']}",
    log_y=True,
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs the lag sweep (resuming a partial one); writes the table.

  Args:
    config: the sweep's settings.
    workdir: where results.json, results.md, timings.json, the two PNGs
      and the per-run records (runs/lag<L>/<network>.json) go.

  Returns:
    The contents of results.json: "config", "lags", "chance", "accuracy"
    (network or ESN readout -> one test accuracy per lag),
    "final_train_loss" (network -> the mean loss of the last 20 steps per
    lag), "grad_lag" (the swept lag nearest `config.grad_lag`),
    "grad_norms" ("init" / "trained" -> network -> mean ||dL_T/dh_t|| at
    T - t = 0, 1, ..., grad_lag) and "table".

  Raises:
    ValueError: if the workdir holds runs of other settings.
    equivlab.training.WorkdirInUseError: if another live run uses it.
    OSError: if the workdir or a record cannot be written.
  """
  workdir = pathlib.Path(workdir)
  with checkpoint.WorkdirLock(workdir):
    records, seconds = _sweep(config, workdir)
    results = _results(config, records)
    results["table"] = _table(config, results)
    _figures(workdir, results)
    sweeps.write_results(
      workdir, results, table=results["table"], timings=seconds
    )
  return results


define_flags, main = _common.entry_points(Config, run, "rnn_memory")

if __name__ == "__main__":
  _common.launch(main, define_flags)
