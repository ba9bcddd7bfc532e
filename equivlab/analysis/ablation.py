"""Summaries of an ablation: one idea changed at a time, over seeds.

Each variant of a training recipe runs with several seeds; a row gives its
final test accuracy as mean and SAMPLE standard deviation over seeds, the
change against reference variants, how fast it learns (the epochs to reach
a fraction of the final accuracy) and its final losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from equivlab.analysis import metrics


def epochs_to_fraction(accuracies: Sequence[float], fraction: float) -> int:
  """The first epoch (1-based) whose accuracy reaches `fraction * final`.

  Raises:
    ValueError: for an empty curve.
  """
  if not accuracies:
    raise ValueError("accuracies must hold at least one epoch, got none.")
  target = fraction * accuracies[-1]
  return next(i + 1 for i, a in enumerate(accuracies) if a >= target)


def summarize(
  runs: Mapping[str, Sequence[Mapping[str, Any]]],
  references: Sequence[str] = (),
) -> list[dict]:
  """One table row per variant from the per-seed results.

  Args:
    runs: variant -> one result per seed, each a mapping with the final
      "test_accuracy", "train_loss", "test_loss" and the per-epoch
      "history" (a `TrainResult` or its record in results.json).
    references: variants each row is compared with ("vs_<name>": the
      difference of the mean test accuracies), where they ran.

  Returns:
    Rows with the final test accuracy's mean and SAMPLE standard deviation
    over seeds (`metrics.mean_std`), its change against each reference,
    the mean epochs to 95% of the final accuracy and the mean final losses.
  """
  means = {
    name: metrics.mean_std([r["test_accuracy"] for r in rs])
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
    for ref in references:
      if ref in means:
        row[f"vs_{ref}"] = means[name][0] - means[ref][0]
    rows.append(row)
  return rows
