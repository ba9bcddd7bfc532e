"""`TrainResult`: what `train_and_evaluate` gives back."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from equivlab.training.config import TrainConfig
from equivlab.training.state import TrainState


def host_copy(tree: Any) -> Any:
  """NumPy copies of a pytree of (replicated) jax arrays, on this host."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)  # Replicated: every copy is the same.
    return np.asarray(x)

  return jax.tree_util.tree_map(one, tree)


class TrainResult(Mapping):
  """A trained model's state with its metrics.

  Reads as a mapping of the final metrics, as `train_and_evaluate` has
  always returned them ("train_loss", "train_accuracy", "test_loss",
  "test_accuracy", `"<name>/test_..."` per extra data set, "step", "epoch",
  "num_params", "history"), plus "params" and "batch_stats". Two results
  are equal when their metrics, history and arrays are bitwise equal.

  Attributes:
    config: the run's config (`num_classes` resolved).
    model: the trained flax module.
    state: the final `TrainState` (NumPy arrays on the host).
    metrics: the last epoch's metrics with "step", "epoch", "num_params".
    history: per-epoch metric dicts.
  """

  def __init__(
    self,
    *,
    config: TrainConfig,
    model: nn.Module,
    state: TrainState,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
  ):
    self.config = config
    self.model = model
    self.state = state
    self.metrics = metrics
    self.history = history

  @classmethod
  def from_run(cls, *, config, model, state, history, step) -> TrainResult:
    """The result of a finished run (`state` may be replicated arrays)."""
    state = host_copy(state)
    metrics = dict(history[-1]) if history else {}
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    metrics.update({"step": step, "num_params": int(num_params)})
    return cls(
      config=config,
      model=model,
      state=state,
      metrics=metrics,
      history=[dict(h) for h in history],
    )

  @property
  def params(self) -> Any:
    """The trained "params" collection."""
    return self.state.params

  @property
  def batch_stats(self) -> Any:
    """The "batch_stats" collection ({} for models without batch norm)."""
    return self.state.batch_stats

  @property
  def variables(self) -> dict[str, Any]:
    """`{"params": ..., "batch_stats": ...}`, ready for `model.apply`."""
    return self.state.variables()

  def logits(self, images: Any, *, batch_size: int = 500) -> np.ndarray:
    """Evaluation-mode logits `[N, K]` of the trained model on `images`.

    Args:
      images: `[N, H, W, C]`.
      batch_size: images per call (the last batch is padded, so the model
        compiles once per image size).
    """
    from equivlab.nn import models  # noqa: PLC0415 (models imports layers)

    return np.asarray(
      models.apply_in_batches(
        self.model, self.variables, images, batch_size=batch_size
      )
    )

  def _items(self) -> dict[str, Any]:
    return {
      **self.metrics,
      "history": self.history,
      "params": self.params,
      "batch_stats": self.batch_stats,
    }

  def __getitem__(self, key: str) -> Any:
    return self._items()[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self._items())

  def __len__(self) -> int:
    return len(self._items())

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, TrainResult):
      return NotImplemented
    if (self.metrics, self.history) != (other.metrics, other.history):
      return False
    mine, theirs = (
      jax.tree_util.tree_flatten(r.variables) for r in (self, other)
    )
    return mine[1] == theirs[1] and all(
      np.array_equal(a, b) for a, b in zip(mine[0], theirs[0], strict=True)
    )

  __hash__ = None

  def __repr__(self) -> str:
    shown = {k: v for k, v in self.metrics.items()}
    return f"TrainResult(model={type(self.model).__name__}, metrics={shown})"
