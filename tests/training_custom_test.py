"""Runs of a user's own module: recorded, read back, checked before training.

A module passed as `model=` is recorded in config.json as model "custom"
with its import path and its JSON-able attributes, so the run can be read
back and applied in another process; its output must be logits
`[N, num_classes]`, checked from shapes before the first step.
"""

import dataclasses
import json
import logging

import flax.linen as nn
import jax
import numpy as np
import pytest

from equivlab import train
from equivlab.training import state

TINY = train.TrainConfig(
  train_limit=64,
  test_limit=32,
  num_epochs=1,
  batch_size=32,
  num_devices=1,
  progress=False,
)


class TinyNet(nn.Module):
  """A two-layer net of the user's own, importable from this test module."""

  width: int = 4
  num_outputs: int = 10
  activation: object = nn.relu

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    hidden = self.activation(nn.Dense(self.width)(x.reshape(len(x), -1)))
    return nn.Dense(self.num_outputs)(hidden)


class Shaped(nn.Module):
  """Returns zeros of a given shape per batch: outputs of the wrong form."""

  tail: tuple[int, ...] = (10,)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    scale = self.param("scale", nn.initializers.ones, ())
    return scale * jax.numpy.zeros((len(x), *self.tail))


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("custom")
  return workdir, train.train_and_evaluate(TINY, workdir, model=TinyNet(6))


def test_the_config_records_the_module_class_and_fields(custom_run):
  workdir, result = custom_run
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"] == "custom"
  assert saved["model_class"] == "training_custom_test.TinyNet"
  # The function attribute is not JSON-able: left out of the kwargs, named
  # in the fingerprint.
  assert saved["model_kwargs"] == [["num_outputs", 10], ["width", 6]]
  assert saved["model_fingerprint"].startswith("TinyNet(width=6, ")
  assert result.config.model == "custom"
  assert result.config.model_class == "training_custom_test.TinyNet"


def test_load_model_rebuilds_an_importable_module(custom_run):
  workdir, result = custom_run
  model, variables = train.load_model(workdir)
  assert model == TinyNet(6)
  images = np.zeros((3, 28, 28, 1), np.float32) + 0.5
  np.testing.assert_array_equal(
    model.apply(variables, images, train=False), result.logits(images)
  )
  config, _ = train.load_variables(workdir)
  assert train.build_model(config) == TinyNet(6)


def test_reading_back_with_the_module_checks_it(custom_run):
  workdir, _ = custom_run
  model, _ = train.load_model(workdir, model=TinyNet(6))
  assert model == TinyNet(6)
  for read in (train.load_model, train.load_variables):
    with pytest.raises(
      ValueError, match=r"run of TinyNet\(width=6, .* model is TinyNet\(width=7"
    ):
      read(workdir, model=TinyNet(7))


def test_reading_a_checkpoint_prints_nothing_from_orbax(custom_run, caplog):
  workdir, _ = custom_run
  with caplog.at_level(logging.DEBUG, logger="absl"):
    train.load_variables(workdir)
  assert [r.getMessage() for r in caplog.records if r.name == "absl"] == []


def test_a_module_that_cannot_be_rebuilt_asks_for_model(tmp_path):
  class Local(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      return nn.Dense(10)(x.reshape(len(x), -1))

  train.train_and_evaluate(TINY, tmp_path / "local", model=Local())
  with pytest.raises(ValueError, match=r"<locals>\.Local' cannot be imported"):
    train.load_model(tmp_path / "local")
  model, variables = train.load_model(tmp_path / "local", model=Local())
  assert model.apply(variables, np.zeros((2, 28, 28, 1))).shape == (2, 10)
  # A function attribute that differs from its default is not recorded:
  # the module rebuilt from the recorded fields is another one.
  train.train_and_evaluate(
    TINY, tmp_path / "tanh", model=TinyNet(activation=nn.tanh)
  )
  with pytest.raises(ValueError, match="pass the module the run trained"):
    train.load_model(tmp_path / "tanh")


@pytest.mark.parametrize(
  ("config", "message"),
  [
    (dict(model_class="pkg.Net"), "model_class is only for model 'custom'"),
    (dict(model="custom", model_class="Net"), "import path 'package.module"),
  ],
)
def test_model_class_is_checked(config, message):
  with pytest.raises(ValueError, match=message):
    train.TrainConfig(**config)


def test_a_custom_config_without_its_class_is_a_clear_error():
  with pytest.raises(ValueError, match="model 'custom' needs model_class"):
    train.build_model(train.TrainConfig(model="custom"))
  config = train.TrainConfig(
    model="custom",
    model_class="training_custom_test.TinyNet",
    model_kwargs={"depth": 3},
  )
  with pytest.raises(ValueError, match="cannot be made from the recorded"):
    train.build_model(config)


def test_the_progress_bar_names_the_model_and_the_data(tmp_path, capfd):
  config = dataclasses.replace(TINY, progress=True)
  train.train_and_evaluate(config, tmp_path / "named")
  train.train_and_evaluate(config, tmp_path / "custom", model=TinyNet())
  err = capfd.readouterr().err
  assert "mlp on embedded" in err and "TinyNet on embedded" in err


@pytest.mark.parametrize(
  ("model", "got"),
  [
    (TinyNet(num_outputs=5), r"got shape \(2, 5\)"),
    (Shaped(tail=(28, 28, 10)), r"got shape \(2, 28, 28, 10\)"),
    (Shaped(tail=()), r"got shape \(2,\)"),
  ],
)
def test_outputs_that_are_not_logits_are_refused_before_training(
  tmp_path, model, got
):
  config = dataclasses.replace(TINY, num_classes=10)
  expected = r"images of shape \(2, 28, 28, 1\) to float logits \[2, 10\]"
  for num_classes in (10, None):  # given, and taken from the labels
    config = dataclasses.replace(TINY, num_classes=num_classes)
    with pytest.raises(ValueError, match=rf"{expected} .*{got}"):
      train.train_and_evaluate(config, tmp_path, model=model)
  assert not (tmp_path / "metrics.jsonl").exists()


def test_wider_logits_than_the_labels_need_set_num_classes(tmp_path):
  # 8 digits lack some classes; the module's 10 logits are the classes.
  config = dataclasses.replace(TINY, train_limit=8, batch_size=8)
  result = train.train_and_evaluate(config, tmp_path, model=TinyNet())
  assert result.config.num_classes == 10


def test_output_shape_is_computed_without_running_the_model():
  calls = []

  class Counting(TinyNet):
    def __call__(self, x, train: bool = False):
      calls.append(type(x).__name__)
      return super().__call__(x, train)

  shape = state.output_shape(Counting(), np.zeros((2, 28, 28, 1)))
  assert shape == (2, 10)
  assert calls and all("Tracer" in c for c in calls)
