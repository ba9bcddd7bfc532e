"""Tests of equivlab.training.sweeps: grids of runs and resumable records."""

import dataclasses
import json
import logging
import math

import numpy as np
import pytest

from equivlab.training import sweeps
from tests.training_inputs_test import TINY


def test_train_grid_scores_each_run_once_and_keeps_seed_order(tmp_path):
  seen = []
  results, seconds = sweeps.train_grid(
    TINY,
    {"a": {}, "b": sweeps.Variant({"learning_rate": 0.1})},
    (0, 1),
    tmp_path,
    on_done=lambda name, seed, result: seen.append((name, seed, result)),
  )
  assert sorted((n, s) for n, s, _ in seen) == [
    ("a", 0),
    ("a", 1),
    ("b", 0),
    ("b", 1),
  ]
  assert list(results) == ["a", "b"] and len(seconds["b"]) == 2
  for name, seed, result in seen:  # the very results, in seed order
    assert results[name][seed] is result
    assert result.config.seed == seed
  assert results["b"][0].config.learning_rate == 0.1
  saved = json.loads((tmp_path / "runs/b/seed1/config.json").read_text())
  assert (saved["seed"], saved["learning_rate"]) == (1, 0.1)
  # Again in one worker: every run restores from its checkpoint, the same.
  again, _ = sweeps.train_grid(
    TINY, {"a": {}, "b": {"learning_rate": 0.1}}, (0, 1), tmp_path, workers=1
  )
  for name in results:
    assert [r["test_accuracy"] for r in again[name]] == [
      r["test_accuracy"] for r in results[name]
    ]


@pytest.mark.parametrize(
  ("kwargs", "error", "message"),
  [
    ({"base": "mlp"}, TypeError, "base must be a TrainConfig"),
    ({"variants": {}}, ValueError, "variants must name at least one"),
    ({"seeds": ()}, ValueError, "seeds must hold at least one"),
    ({"seeds": (-1,)}, ValueError, r"seeds\[0\] must be an int >= 0"),
    ({"workers": 0}, ValueError, "workers must be an int >= 1"),
    ({"variants": {"a": {"batch_size": 0}}}, ValueError, "batch_size"),
  ],
)
def test_bad_grids_are_clear_errors_before_training(
  tmp_path, kwargs, error, message
):
  args = {"base": TINY, "variants": {"a": {}}, "seeds": (0,), **kwargs}
  with pytest.raises(error, match=message):
    sweeps.train_grid(
      args.pop("base"), args.pop("variants"), args.pop("seeds"), tmp_path,
      **args,
    )  # fmt: skip
  assert not (tmp_path / "runs").exists()


def test_variant_is_frozen_with_empty_defaults():
  variant = sweeps.Variant()
  assert dict(variant.overrides) == {} and variant.model is None
  with pytest.raises(dataclasses.FrozenInstanceError):
    variant.model = "x"


def test_record_store_saves_loads_and_refuses_other_settings(tmp_path):
  store = sweeps.RecordStore(tmp_path, {"hidden": 8, "rate": 0.1})
  assert store.load("lag2", "lstm") is None
  store.save({"accuracy": 0.5, "norms": [1.0, 2.0]}, "lag2", "lstm")
  path = tmp_path / "runs" / "lag2" / "lstm.json"
  assert store.path("lag2", "lstm") == path and path.exists()
  assert store.load("lag2", "lstm") == {"accuracy": 0.5, "norms": [1.0, 2.0]}
  assert not list(path.parent.glob(".*tmp"))  # no half file left behind
  other = sweeps.RecordStore(tmp_path, {"hidden": 16, "rate": 0.1})
  with pytest.raises(ValueError, match="holds runs of other settings.*hidden"):
    other.load("lag2", "lstm")


def test_a_damaged_record_is_run_again(tmp_path, caplog):
  store = sweeps.RecordStore(tmp_path, {"hidden": 8})
  path = store.path("lag2", "gru")
  path.parent.mkdir(parents=True)
  path.write_text("{not json")
  with caplog.at_level(logging.WARNING):
    assert store.load("lag2", "gru") is None
  assert "unreadable" in caplog.text


def test_an_unwritable_record_names_its_path(tmp_path):
  (tmp_path / "runs").write_text("a file where the folder should be")
  store = sweeps.RecordStore(tmp_path, {})
  with pytest.raises(OSError, match="lag2"):
    store.save({"accuracy": 1.0}, "lag2", "gru")


def test_write_results_is_deterministic_json(tmp_path, capsys):
  results = {"b": np.float32(0.5), "a": (1, np.arange(2)), "c": math.nan}
  sweeps.write_results(
    tmp_path / "one", results, table="| t |", timings={"run": 1.5}
  )
  sweeps.write_results(tmp_path / "two", dict(reversed(results.items())))
  one, two = (
    (tmp_path / n / "results.json").read_text() for n in ("one", "two")
  )
  assert one == two
  assert json.loads(one) == {"a": [1, [0, 1]], "b": 0.5, "c": "nan"}
  assert (tmp_path / "one" / "results.md").read_text() == "| t |\n"
  assert json.loads((tmp_path / "one" / "timings.json").read_text()) == {
    "run": 1.5
  }
  assert "| t |" in capsys.readouterr().out
