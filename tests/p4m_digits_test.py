"""Tests of experiments/p4m_digits.py on tiny settings."""

import json
import shutil

import jax
import numpy as np
import pytest
from absl import flags

from equivlab import data, testing
from equivlab.analysis import metrics
from equivlab.nn import models
from experiments import p4m_digits

# One seed of tiny P4CNN and P4MCNN, one epoch on a few dozen digits.
_TINY = dict(
  models=("p4cnn", "p4mcnn"),
  features=(3, 3),  # at width 2 a network can die in its two steps
  num_seeds=1,
  seed=3,
  num_epochs=1,
  batch_size=16,
  train_limit=32,
  test_limit=16,
  num_invariance=6,
  num_devices=1,
  progress=False,
)


def _flag_values(argv):
  flag_values = flags.FlagValues()
  holders = p4m_digits.define_flags(flag_values)
  flag_values(["p4m_digits", *argv])
  return holders


def _params_by_hand(name: str, f: int, k: int = 10) -> int:
  """Parameters of the 7-layer networks, counted from their layers."""
  order = {"z2cnn": 1, "p4cnn": 4, "p4mcnn": 8}[name]
  lifting = 9 * f + f  # 3x3 kernel from 1 channel, one bias per G-channel
  hidden = 5 * (9 * f * order * f + f)  # five 3x3 (group) convolutions
  norms = 6 * 2 * f  # batch norm scale and offset, shared over the group
  last = 16 * f * order * k + k  # the 4x4 layer to the logits
  return lifting + hidden + norms + last


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """The tiny study run once through `run`.

  Returns:
    `(config, workdir, results, the bytes of results.json, trained)`, where
    `trained` is what `run` trained (`train_models`' results, caught on the
    way: no second training or restore).
  """
  workdir = tmp_path_factory.mktemp("p4m")
  config = p4m_digits.Config(**_TINY)
  caught = []
  train_models = p4m_digits.train_models

  def spy(*args):
    caught.append(train_models(*args))
    return caught[-1]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(p4m_digits, "train_models", spy)
    results = p4m_digits.run(config, workdir)
  ((trained, _),) = caught
  saved = (workdir / "results.json").read_bytes()
  return config, workdir, results, saved, trained


def test_run_writes_checked_results_and_figures(study):
  config, workdir, results, saved_bytes, _ = study
  saved = json.loads(saved_bytes)
  assert saved["table"] == results["table"]
  assert [(r["model"], r["seed"]) for r in saved["runs"]] == [
    ("p4cnn", 3),
    ("p4mcnn", 3),
  ]
  for record in saved["runs"]:
    assert record["params"] == _params_by_hand(record["model"], 3)
    # The study's rotated error is the engine's own test evaluation.
    engine = 100 * (1 - record["history"][-1]["test_accuracy"])
    assert record["errors"]["rotated"] == pytest.approx(engine)
    assert set(record["logit_change"]) == set(p4m_digits.ELEMENTS)
    assert record["logit_change"]["identity"] == 0.0
  p4cnn, p4mcnn = saved["runs"]
  # A mirror cannot move P4MCNN's predictions: equal errors on a set and
  # on its mirror image; P4CNN's move.
  errors = p4mcnn["errors"]
  assert errors["mirrored"] == errors["upright"]
  assert errors["rotated+mirrored"] == errors["rotated"]
  assert set(p4mcnn["pred_change"].values()) == {0.0}
  assert min(p4cnn["logit_change"][e] for e in p4m_digits.MIRRORS) > 1e-3
  assert [p4cnn["pred_change"][e] for e in p4m_digits.ROTATIONS] == [0.0] * 3
  # Confusion matrices against the study's own errors and its predictions.
  n = config.test_limit
  for record in saved["runs"]:
    for key in p4m_digits.MISTAKE_SETS:
      counts = np.asarray(record["confusion"][key])
      assert counts.sum() == n
      wrong = 100 * (n - np.trace(counts)) / n
      assert wrong == pytest.approx(record["errors"][key])
  for row, mine in zip(saved["rows"], saved["runs"], strict=True):
    assert row["mistakes"] == {
      key: [list(m) for m in metrics.top_confusions(mine["confusion"][key])]
      for key in p4m_digits.MISTAKE_SETS
    }
    assert row["stats"]["rotated"] == [mine["errors"]["rotated"], 0.0]
    cost = mine["errors"]["rotated+mirrored"] - mine["errors"]["rotated"]
    assert row["mirror cost (points)"] == f"{cost:+.2f} +- 0.00"
  assert saved["rows"][1]["logit change, mirrors"] == "< 1e-5"
  assert saved["rows"][0]["logit change, mirrors"] != "< 1e-5"
  assert "sample standard deviation over 1 seeds" in saved["table"]
  for name in ("errors", "invariance", "pred_changes", "examples"):
    assert (workdir / f"{name}.png").stat().st_size > 1000
  assert (workdir / "results.md").read_text() == saved["table"] + "\n"


def test_trained_p4mcnn_is_p4m_invariant_and_p4cnn_not_to_mirrors(study):
  config, _, results, _, trained = study
  (p4cnn,), (p4mcnn,) = trained["p4cnn"], trained["p4mcnn"]
  assert p4cnn["step"] == p4mcnn["step"] == 2  # 32 digits, batches of 16
  sets, _ = p4m_digits.evaluation_sets(config)
  x = sets["rotated"][: config.num_invariance]
  testing.assert_invariant(
    p4mcnn.logits, x, group="p4m", elements=list(range(8))
  )
  testing.assert_invariant(
    p4cnn.logits, x, group="p4m", elements=list(p4m_digits.ROTATIONS)
  )
  testing.assert_not_equivariant(
    p4cnn.logits,
    x,
    group="p4m",
    output="invariant",
    elements=list(p4m_digits.MIRRORS),
    every=True,
  )
  # The study's recorded changes are these models' changes.
  for record, model in zip(results["runs"], (p4cnn, p4mcnn), strict=True):
    again = metrics.logit_changes(
      model.logits, x, group="p4m", elements=list(range(8))
    )
    for name in p4m_digits.ELEMENTS:
      np.testing.assert_allclose(
        record["logit_change"][name], again[name], rtol=1e-6, atol=1e-9
      )


def test_flags_run_the_same_study(study, tmp_path):
  config, workdir, _, saved_bytes, _ = study
  tiny = [
    f"--{k}={v}" for k, v in _TINY.items() if k not in ("models", "features")
  ]
  argv = ["--models=p4cnn,p4mcnn", "--features=3,3", *tiny]
  assert _flag_values(argv).config() == config
  # P4MCNN alone, resumed from a copy of the study's finished runs (cheap):
  # the same record and row as in the study.
  shutil.copytree(workdir / "runs", tmp_path / "runs")
  argv = ["--models=p4mcnn", "--features=3", *tiny]
  holders = _flag_values([f"--workdir={tmp_path}", *argv])
  p4m_digits.main(["p4m_digits"], holders)
  mine = json.loads((tmp_path / "results.json").read_text())
  saved = json.loads(saved_bytes)
  assert mine["runs"] == saved["runs"][1:]
  assert mine["rows"] == saved["rows"][1:]


def test_default_widths_match_parameter_counts():
  config = p4m_digits.Config()
  counts = {}
  for name, width in zip(config.models, config.widths, strict=True):
    model = models.get_model(name, features=width)
    shapes = jax.eval_shape(
      lambda m=model: models.init_model(jax.random.key(0), m)
    )
    counts[name] = models.count_params(shapes)
    assert counts[name] == _params_by_hand(name, width)
  assert counts == {"z2cnn": 21_750, "p4cnn": 20_593, "p4mcnn": 20_812}
  assert max(counts.values()) / min(counts.values()) < 1.06
  assert p4m_digits.Config(models=("p4cnn_rotpool",)).widths == (20,)


def test_test_sets_by_hand():
  config = p4m_digits.Config(test_limit=5)
  sets, labels = p4m_digits.evaluation_sets(config)
  upright, want_labels = data.load_dataset("embedded", "test")
  rotated, _ = data.load_dataset("embedded_rot", "test")
  np.testing.assert_array_equal(labels, want_labels[:5])
  np.testing.assert_array_equal(sets["upright"], upright[:5])
  np.testing.assert_array_equal(sets["rotated"], rotated[:5])
  np.testing.assert_array_equal(sets["mirrored"], upright[:5, :, ::-1])
  np.testing.assert_array_equal(sets["rotated+mirrored"], rotated[:5, :, ::-1])


@pytest.mark.parametrize(
  ("dataset", "train_set", "trained_on", "augment"),
  [
    ("embedded", "rotated", "embedded_rot", "none"),
    ("embedded", "upright", "embedded", "none"),
    ("mnist", "rotated", "mnist", "rotate"),
    ("mnist", "upright", "mnist", "none"),
  ],
)
def test_what_each_train_set_trains_on(dataset, train_set, trained_on, augment):
  config = p4m_digits.Config(
    dataset=dataset, train_set=train_set, num_epochs=2, train_limit=7
  )
  base = p4m_digits.base_config(config)
  assert (base.dataset, base.augment) == (trained_on, augment)
  assert (base.num_epochs, base.train_limit, base.schedule) == (2, 7, "cosine")


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (
      ["--models=p4cnn,vit"],
      r"models must be distinct names .*unknown: \['vit",
    ),
    (["--models=p4cnn,p4cnn"], "models must be distinct names"),
    (["--features=20,9"], r"features must hold one width per model .*\(3\)"),
    (["--features=20,0,6"], r"features\[1\] must be an int >= 1, got 0"),
    (["--features=a,b,c"], "--features must be a comma-separated list of int"),
    (["--train_set=flipped"], "train_set must be one of"),
    (["--num_seeds=0"], "num_seeds must be an int >= 1, got 0"),
    (["--num_epochs=0"], "num_epochs must be an int >= 1, got 0"),
    (["--num_invariance=0"], "num_invariance must be an int >= 1, got 0"),
    (["--test_limit=0"], "test_limit must be an int >= 1 or None, got 0"),
    (["--learning_rate=nan"], "learning_rate must be a finite number > 0"),
  ],
)
def test_bad_flags_are_flag_errors(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(argv)


def test_models_without_features_take_the_matched_widths():
  holders = _flag_values(["--models=p4mcnn,z2cnn"])
  assert holders.config().widths == (6, 20)


def test_missing_tfds_dataset_fails_before_training(tmp_path):
  config = p4m_digits.Config(dataset="mnist", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError):
    p4m_digits.run(config, tmp_path / "work")
  assert not (tmp_path / "work" / "runs").exists()
