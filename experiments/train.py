r"""Generic supervised training launcher, data-parallel on one or many hosts.

Trains `--model` on `--dataset` with `equivlab.train.train_and_evaluate`
over a data-parallel mesh of `--num_devices` devices (default: all). Every
field of `equivlab.train.TrainConfig` is a flag of the same name. With
`--coordinator_address`, `--num_processes` and `--process_id` it first joins
a multi-process run through `jax.distributed` (data parallelism: gradients
averaged across workers, the all-reduce from GSPMD). Writes to
`--workdir` (from process 0 only, except orbax's shared checkpoint):
  results.json          the config, the final metrics and per-epoch history,
                        the device and process counts;
  learning_curves.png   train and test loss and accuracy per epoch;
  metrics.jsonl, tensorboard/, checkpoints/, config.json (equivlab.train).

Checkpoints are written at every epoch end and every
--checkpoint_every_secs seconds; the same command again resumes.

One host, all devices:
  python -m experiments.train --model=cnn --workdir=runs/cnn
Two hosts (run on each, with its own --process_id):
  python -m experiments.train --model=cnn --workdir=/shared/cnn \
    --coordinator_address=10.0.0.1:12355 --num_processes=2 --process_id=0
A Cloud TPU pod slice (on every worker; jax finds the coordinator):
  python -m experiments.train --model=cnn --workdir=/mnt/shared/cnn \
    --auto_distributed
"""

import dataclasses
import pathlib

import jax
from absl import logging

from equivlab import checks, parallel, train
from equivlab.analysis import viz
from equivlab.training import sweeps
from experiments import _common


@dataclasses.dataclass(frozen=True)
class LaunchConfig(train.TrainConfig):
  """A training run, and how this process joins a multi-process run.

  Attributes:
    model: an equivlab.nn.models name (mlp, cnn, cnn_gap, z2cnn, p4cnn, ...).
    model_kwargs: the model's keyword arguments as a JSON object, e.g.
      '{"norm": "batch"}'.
    coordinator_address: host:port of process 0's jax.distributed
      coordinator; unset for a single-process run.
    num_processes: number of processes (hosts) in the run.
    process_id: this process's index in [0, num_processes).
    auto_distributed: join a multi-process run whose coordinator, process
      count and id jax detects itself (Cloud TPU pod slices, Slurm, Open
      MPI).
    distributed_timeout_s: seconds to wait for the coordinator and the
      other processes.
  """

  model: str = "cnn"
  coordinator_address: str | None = None
  num_processes: int = 1
  process_id: int = 0
  auto_distributed: bool = False
  distributed_timeout_s: float = 60.0

  def __post_init__(self):
    super().__post_init__()
    checks.check_int("num_processes", self.num_processes, minimum=1)
    checks.check_int(
      "process_id", self.process_id, minimum=0, maximum=self.num_processes - 1
    )
    checks.check_number(
      "distributed_timeout_s",
      self.distributed_timeout_s,
      minimum=0,
      strict_minimum=True,
    )
    if self.coordinator_address is None and self.num_processes > 1:
      raise ValueError(
        "coordinator_address must be host:port for a multi-process run, "
        f"got None with num_processes={self.num_processes}."
      )

  def train_config(self) -> train.TrainConfig:
    """The `TrainConfig` part of these settings."""
    names = [f.name for f in dataclasses.fields(train.TrainConfig)]
    return train.TrainConfig(**{n: getattr(self, n) for n in names})


def join_distributed(config: LaunchConfig) -> None:
  """Joins the multi-process run `config` describes (no-op for one)."""
  if config.auto_distributed:
    parallel.initialize_distributed(
      None, None, None, timeout_s=config.distributed_timeout_s
    )
  elif config.coordinator_address is not None:
    parallel.initialize_distributed(
      config.coordinator_address,
      config.num_processes,
      config.process_id,
      timeout_s=config.distributed_timeout_s,
    )


def run(config: LaunchConfig, workdir: str | pathlib.Path) -> dict:
  """Joins the distributed run if asked, trains, writes results and a plot.

  Args:
    config: the run's settings.
    workdir: output directory, the same path for every process.

  Returns:
    The results (also written to `workdir/results.json` by process 0).

  Raises:
    ValueError: for bad distributed settings or a bad config (see
      `train_and_evaluate`).
    TimeoutError: if the coordinator cannot be reached in time.
  """
  join_distributed(config)
  result = train.train_and_evaluate(config.train_config(), workdir)
  results = {
    "config": result.config.to_json(),
    "final": dict(result.metrics),
    "history": result.history,
    "num_devices": config.num_devices or jax.device_count(),
    "num_processes": jax.process_count(),
    "backend": jax.default_backend(),
  }
  if parallel.is_primary():
    sweeps.write_results(workdir, results)
    _plot(result.history, pathlib.Path(workdir) / "learning_curves.png")
    logging.info("results in %s: %s", workdir, results["final"])
  return results


def _plot(history: list[dict], path: pathlib.Path) -> None:
  names = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
  curves = {
    name: [record[name] for record in history]
    for name in names
    if history and name in history[0]
  }
  viz.plot_learning_curves(
    curves, path, xlabel="epoch", ylabel="loss / accuracy"
  )


define_flags, main = _common.entry_points(LaunchConfig, run, "train")

if __name__ == "__main__":
  _common.launch(main, define_flags)
