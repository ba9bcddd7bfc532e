"""Evaluation over whole data sets and the run's metrics files.

Metrics go to `<workdir>/metrics.jsonl` (one JSON record per logged step,
`"kind": "step"`, and per epoch, `"kind": "epoch"`) and to TensorBoard
event files (tensorboardX) under `<workdir>/tensorboard`, from process 0
only. A record is never written twice for a step: a run that resumes from
step s first drops the records after s (the steps it will redo).
"""

import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from equivlab import data, parallel
from equivlab.training.checkpoint import write_errors
from equivlab.training.state import TrainState


def local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's part of a global batch (all of it on one process)."""
  if jax.process_count() == 1:
    return batch
  rows = parallel.process_slice(len(batch["label"]))
  return {name: value[rows] for name, value in batch.items()}


def evaluate(
  eval_step: Callable[..., dict[str, Any]],
  state: TrainState,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  batch_size: int,
  mesh: jax.sharding.Mesh,
) -> dict[str, float]:
  """Loss and accuracy over a whole data set (the last batch padded).

  Every batch has the same shape (the last one is padded and masked), so
  `eval_step` compiles once.

  Args:
    eval_step: a run's eval step (`equivlab.training.steps`).
    state: a (replicated) `TrainState`.
    images: `[N, H, W, C]`.
    labels: `[N]`.
    batch_size: a multiple of the mesh's device count.
    mesh: the data-parallel mesh.

  Returns:
    {"loss": mean loss, "accuracy": fraction correct}.
  """
  loss_sum = correct_sum = count_sum = 0.0
  batches = data.iterate_batches(
    images, labels, batch_size, key=None, last_batch="pad"
  )
  for batch in batches:
    metrics = eval_step(state, parallel.shard_batch(local_rows(batch), mesh))
    metrics = jax.device_get(metrics)
    count = float(metrics["count"])
    loss_sum += float(metrics["loss"]) * count
    correct_sum += float(metrics["accuracy"]) * count
    count_sum += count
  return {"loss": loss_sum / count_sum, "accuracy": correct_sum / count_sum}


def read_metrics(
  workdir: str | pathlib.Path, kind: str | None = None
) -> list[dict[str, Any]]:
  """The records of a run's metrics.jsonl, in order.

  Args:
    workdir: the run's workdir.
    kind: only the records of this kind ("step", "epoch", "resume");
      None: all.

  Raises:
    FileNotFoundError: if the workdir has no metrics.jsonl.
  """
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines if line.strip()]
  return [r for r in records if kind is None or r.get("kind") == kind]


class MetricWriter:
  """metrics.jsonl and TensorBoard events; silent outside process 0.

  Args:
    workdir: the run's directory.
    resume_step: the step the run starts from; records after it are
      dropped (they will be written again).
    active: write at all (process 0).
  """

  def __init__(self, workdir: pathlib.Path, resume_step: int, active: bool):
    self.active = active
    self.path = workdir / "metrics.jsonl"
    self._tb = None
    self._written: set[tuple[str, int]] = set()
    if not active:
      return
    with write_errors(str(self.path)):
      self._keep_until(resume_step)
    from tensorboardX import SummaryWriter  # noqa: PLC0415 (slow import)

    # purge_step hides events of the redone steps from TensorBoard.
    self._tb = SummaryWriter(
      str(workdir / "tensorboard"), purge_step=resume_step
    )

  def _keep_until(self, resume_step: int) -> None:
    if not self.path.exists():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:  # A line cut short by a kill.
        continue
      key = (record.get("kind"), record.get("step", 0))
      if key[1] <= resume_step and key not in self._written:
        kept.append(line)
        self._written.add(key)
    self.path.write_text("".join(line + "\n" for line in kept))

  def write(self, record: dict[str, Any], prefix: str) -> None:
    """Appends `record` (with "kind" and "step") unless already written."""
    key = (record.get("kind"), record["step"])
    if not self.active or key in self._written:
      return
    self._written.add(key)
    with write_errors(str(self.path)), self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    step = record["step"]
    for name, value in record.items():
      if name not in ("step", "epoch", "kind") and isinstance(
        value, int | float
      ):
        self._tb.add_scalar(f"{prefix}/{name}", value, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
