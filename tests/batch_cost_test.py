"""Smoke and unit tests of benchmarks/batch_cost.py (no timing asserted)."""

import json

import numpy as np
import pytest

from benchmarks import batch_cost


def test_fit_line_recovers_a_line_and_rejects_bad_input():
  fit = batch_cost.fit_line([1.0, 2.0, 4.0], [3.0, 5.0, 9.0])
  np.testing.assert_allclose([fit["slope"], fit["intercept"]], [2.0, 1.0])
  np.testing.assert_allclose(fit["r2"], 1.0)
  with pytest.raises(ValueError):
    batch_cost.fit_line([1.0, 1.0], [2.0, 3.0])


def test_hand_count_formulas_hand_computed():
  # L = 2 hidden layers of d_H = 8, d = 784 inputs, K = 10 classes:
  # (L-1)(3 d_H^2 + d_H) + d_H (2 d_H + d + 3K + 1) + 2K
  # = 200 + 8 * 831 + 20 = 6868 per example;
  # (L-1)(d_H^2 + d_H) + d_H (d + K) + K = 72 + 6352 + 10 = 6434 numbers
  # of parameters, plus 2 M d_H = 16 M.
  assert batch_cost.hand_count_compute(1, 2, 8, 784, 10) == 6868
  assert batch_cost.hand_count_compute(4, 2, 8, 784, 10) == 4 * 6868
  assert batch_cost.hand_count_memory(0, 2, 8, 784, 10) == 6434
  assert batch_cost.hand_count_memory(3, 2, 8, 784, 10) == 6434 + 48


def test_run_measures_the_step_the_hand_count_predicts(tmp_path, capsys):
  results = batch_cost.run(
    tmp_path,
    hidden=(8, 8),
    max_batch=4,
    steps=1,
    repeats=1,
    time_fit_min_batch=1,
  )
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved == json.loads(json.dumps(results))
  rows = {r["batch_size"]: r for r in saved["rows"]}
  assert sorted(rows) == [1, 2, 4]
  # Per example, the step's matrix products: forward 2 (784*8 + 8*8 +
  # 8*10), as many for the weight gradients, and 2 (8*8 + 8*10) for the
  # input gradients of the two upper layers = 25,952 FLOPs; XLA adds the
  # elementwise work (biases, ReLU, softmax), about 1%.
  per_example = (rows[4]["flops"] - rows[2]["flops"]) / 2
  np.testing.assert_allclose(per_example, 25_952, rtol=0.03)
  # The only argument that grows with M is the batch: 784 float32 pixels
  # and one int32 label per example.
  for small, large in ((1, 2), (2, 4)):
    grown = rows[large]["argument_bytes"] - rows[small]["argument_bytes"]
    assert grown == (large - small) * (784 + 1) * 4
  for r in rows.values():
    assert r["total_bytes"] == (
      r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"]
      - r["alias_bytes"]
    )  # fmt: skip
    assert r["seconds_per_step"] > 0
  # The fits are least-squares lines through the rows.
  ms = np.array([1.0, 2.0, 4.0])
  flops = np.array([rows[m]["flops"] for m in (1, 2, 4)])
  slope, intercept = np.polyfit(ms, flops, 1)
  np.testing.assert_allclose(
    [saved["fits"]["flops"]["slope"], saved["fits"]["flops"]["intercept"]],
    [slope, intercept],
    rtol=1e-9,
  )
  comparison = saved["comparison"]
  assert comparison["hand_count_compute_per_example"] == 6868
  np.testing.assert_allclose(
    comparison["xla_over_hand_count_compute"], slope / 6868, rtol=1e-9
  )
  assert (tmp_path / "batch_cost.md").read_text().startswith("MLP hidden")
  assert (tmp_path / "batch_cost.png").read_bytes()[:4] == b"\x89PNG"
  assert "Against the hand count" in capsys.readouterr().out


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"hidden": ()}, "hidden must be positive widths"),
    ({"hidden": (8, 0)}, "hidden must be positive widths"),
    ({"max_batch": 0}, "max_batch must be >= 1"),
    ({"repeats": 0}, "repeats must be >= 1"),
  ],
)
def test_bad_settings_are_named(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    batch_cost.run(tmp_path, **kwargs)
