"""Tests of benchmarks/engine_accuracy.py on a tiny main job."""

import dataclasses
import json
import os

import pytest

from benchmarks import engine_accuracy
from equivlab.ops import convolution, xla_options


def test_compare_trains_each_variant_and_pairs_the_seeds(
  tmp_path, capsys, tiny_rotated_digits
):
  config = dataclasses.replace(
    tiny_rotated_digits, models=("p4cnn",), num_seeds=2
  )
  results = engine_accuracy.compare(config, ["default", "jaxlib"], tmp_path)
  assert results["seeds"] == [0, 1]
  row = results["models"]["p4cnn"]
  for variant in ("default", "jaxlib"):
    assert len(row[variant]["errors"]) == 2
    assert (tmp_path / variant / "results.json").exists()
  paired = row["paired"]["default-jaxlib"]
  first, second = row["default"]["errors"], row["jaxlib"]["errors"]
  diffs = [a - b for a, b in zip(first, second, strict=True)]
  assert paired["mean_difference"] == pytest.approx(sum(diffs) / 2)
  assert 0.0 <= paired["paired_t_p"] <= 1.0
  engine_accuracy._print(results)
  assert "default - jaxlib" in capsys.readouterr().out
  json.dumps(results)  # Written as JSON by main.


def test_engine_variant_sets_and_restores_the_engine():
  before = os.environ.get(convolution.ENV_VAR)
  options = xla_options.compiler_options
  with engine_accuracy.engine_variant("jaxlib"):
    assert os.environ[convolution.ENV_VAR] == "cpu"
    chosen = xla_options.compiler_options("cpu")
    assert (
      chosen[xla_options.YNN_FUSION_OPTION]
      == xla_options.JAXLIB_DEFAULT_YNN_FUSIONS
    )
    assert xla_options.compiler_options("gpu") == {}
  assert xla_options.compiler_options is options
  assert os.environ.get(convolution.ENV_VAR) == before
  with engine_accuracy.engine_variant("default"):
    assert xla_options.compiler_options("cpu") == options("cpu")
  with pytest.raises(ValueError, match="variant must be one of"):
    with engine_accuracy.engine_variant("fast"):
      pass


def test_paired_differences_and_bad_input():
  got = engine_accuracy.paired([10.0, 12.0, 11.0], [9.0, 12.0, 10.0])
  assert got["mean_difference"] == pytest.approx(2 / 3)
  assert got["std_difference"] == pytest.approx(0.5773502691896)
  assert engine_accuracy.paired([1.0, 2.0], [1.0, 2.0])["paired_t_p"] == 1.0
  assert engine_accuracy.paired([3.0], [1.0]) == {"mean_difference": 2.0}
  with pytest.raises(ValueError, match="one error per seed"):
    engine_accuracy.paired([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--variants=default"], "expected two or more"),
    (["--variants=default,fast"], "expected two or more"),
    (["--num_seeds=0"], "--num_seeds must be >= 1"),
  ],
)
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
  with pytest.raises(SystemExit):
    engine_accuracy._parse(argv)
  assert message in capsys.readouterr().err
