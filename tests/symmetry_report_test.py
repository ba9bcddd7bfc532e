"""Tests of experiments/symmetry_report.py on tiny settings."""

import json

import pytest
from absl import flags

from experiments import symmetry_report


def test_smoke_names_the_strided_layer(tmp_path, capsys):
  config = symmetry_report.Config(
    model="p4cnn_strided", image_size=28, features=2, batch=1
  )
  results = symmetry_report.run(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["table"] == results["table"]
  report = saved["report"]
  # 28 -> 26 after the lifting conv: stride 2 cannot centre on 26.
  assert report["first_break_path"] == "GroupConv_0"
  assert report["why"].startswith("stride 2 on an even input (26x26")
  assert (tmp_path / "symmetry_report.png").stat().st_size > 1000
  out = capsys.readouterr().out
  assert "first break: GroupConv_0 (GroupConv)" in out


def test_main_through_flags_on_an_odd_size(tmp_path):
  flag_values = flags.FlagValues()
  holders = symmetry_report.define_flags(flag_values)
  flag_values(
    [
      "symmetry_report",
      "--model=p4cnn_strided",
      "--image_size=29",
      "--features=2",
      "--batch=1",
      f"--workdir={tmp_path}",
    ]
  )
  symmetry_report.main(["symmetry_report"], holders)
  report = json.loads((tmp_path / "results.json").read_text())["report"]
  assert report["first_break"] is None  # 29 -> 27: the windows centre


def test_bad_flags_are_refused():
  with pytest.raises(ValueError, match="image_size"):
    symmetry_report.Config(image_size=20)
  with pytest.raises(ValueError, match="model"):
    symmetry_report.Config(model="resnet")


def test_benchmark_smoke_and_help(monkeypatch, capsys):
  from benchmarks import symmetry_report as bench  # noqa: PLC0415

  report = bench.run_report(batch=1, repeats=1, names=("p4cnn",))
  key = "(a) p4cnn report / (4 forward passes), cold"
  assert "(a) p4cnn report / (4 forward passes), warm" in report["ratios"]
  assert report["ratios"][key] > 0
  exported = bench.run_export(batch=1, repeats=1, names=("user",))
  assert exported["ratios"]["(b) user exported / group"] > 0
  monkeypatch.setattr("sys.argv", ["symmetry_report", "--help"])
  with pytest.raises(SystemExit) as info:
    bench.main()
  assert info.value.code == 0 and "--repeats" in capsys.readouterr().out
  monkeypatch.setattr("sys.argv", ["symmetry_report", "--size=20"])
  with pytest.raises(SystemExit):
    bench.main()
  assert "--size >= 28, got 20" in capsys.readouterr().err
