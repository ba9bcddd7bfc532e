"""Bad inputs to the training engine end in a clear error before training.

Each case names the argument, what was expected and what was received, and
is raised by equivlab before a step runs: never a raw XLA or flax error, a
NaN message, or a silently wrong run.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import train
from equivlab.training import loop

TINY = train.TrainConfig(
  model="mlp",
  model_kwargs={"hidden_sizes": (8,)},
  train_limit=64,
  test_limit=32,
  num_epochs=1,
  batch_size=32,
  num_devices=1,
  progress=False,
)


@pytest.mark.parametrize(
  ("field", "value", "error", "message"),
  [
    ("momentum", 1.0, ValueError, r"momentum must be .* >= 0 and < 1"),
    ("momentum", -0.1, ValueError, "momentum must be"),
    ("max_shift", -1, ValueError, "max_shift must be an int >= 0"),
    ("learning_rate", float("nan"), ValueError, "learning_rate must be"),
    ("learning_rate", 0.0, ValueError, "learning_rate must be"),
    ("num_classes", 0, ValueError, "num_classes must be an int >= 1"),
    ("batch_size", 2.5, TypeError, "batch_size must be an int >= 1"),
    ("checkpoint_every_secs", 0, ValueError, "checkpoint_every_secs"),
    ("download", "no", TypeError, "download must be a bool"),
    ("model_kwargs", {"hidden sizes": 3}, ValueError, "identifiers"),
    ("extra_eval_datasets", "embedded", ValueError, "tuple of data set"),
    ("seed", -1, ValueError, "seed must be an int >= 0"),
  ],
)
def test_bad_config_fields_fail_when_the_config_is_made(
  field, value, error, message
):
  with pytest.raises(error, match=message):
    dataclasses.replace(TINY, **{field: value})


def test_num_classes_smaller_than_the_labels_names_both(tmp_path):
  config = dataclasses.replace(TINY, num_classes=5)
  with pytest.raises(
    ValueError, match=r"do not fit num_classes=5: labels must lie in \[0, 5\)"
  ) as info:
    train.train_and_evaluate(config, tmp_path)
  assert "Raise num_classes to at least 10" in str(info.value)
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    ({"augment": "shift", "max_shift": 14}, "max_shift must be at most 13"),
    ({"augment": "crop_flip", "crop_padding": 20}, "crop_padding must be"),
    ({"augment": "rotate", "max_angle": 90.0}, "max_angle must be at most pi"),
  ],
)
def test_augmentation_larger_than_the_images_is_refused(
  tmp_path, overrides, message
):
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(dataclasses.replace(TINY, **overrides), tmp_path)


@pytest.mark.parametrize(
  ("model", "error", "message"),
  [
    (nn.Dense, TypeError, "the class Dense; call it first"),
    ("mlp", TypeError, "flax.linen.Module instance, got str"),
    (lambda x: x, TypeError, "got function"),
  ],
)
def test_model_must_be_a_module_instance(tmp_path, model, error, message):
  with pytest.raises(error, match=message):
    train.train_and_evaluate(TINY, tmp_path, model=model)


def test_a_model_that_cannot_take_the_images_fails_at_init(tmp_path):
  class Flat(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      if x.ndim != 2:
        raise ValueError(f"Flat expects [N, D], got shape {x.shape}.")
      return nn.Dense(10)(x)

  with pytest.raises(ValueError, match=r"Flat expects \[N, D\]"):
    train.train_and_evaluate(TINY, tmp_path, model=Flat())


def test_unknown_model_keyword_fails_before_data_is_loaded(monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError("data loaded before the model was checked")

  monkeypatch.setattr(loop, "_load_data", no_data)
  config = dataclasses.replace(TINY, model_kwargs={"widths": (4,)})
  with pytest.raises(ValueError, match="unknown keyword arguments"):
    train.train_and_evaluate(config, "unused")


def test_sample_input_must_be_images():
  with pytest.raises(ValueError, match=r"sample_input must be images"):
    train.create_train_state(
      np.zeros(2, np.uint32), TINY, jnp.zeros((2, 784)), total_steps=1
    )


def test_a_workdir_from_another_model_is_refused(tmp_path):
  class Tiny(nn.Module):
    width: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
      return nn.Dense(10)(nn.relu(nn.Dense(self.width)(x.reshape(len(x), -1))))

  train.train_and_evaluate(TINY, tmp_path, model=Tiny())
  with pytest.raises(
    ValueError,
    match=r"holds a checkpoint of custom model Tiny\(width=4\) \(class "
    r"training_inputs_test\..*<locals>\.Tiny\), but this run trains custom "
    r"model Tiny\(width=8\)",
  ):
    train.train_and_evaluate(TINY, tmp_path, model=Tiny(width=8))
  again = train.train_and_evaluate(TINY, tmp_path, model=Tiny())
  assert again.history[-1]["epoch"] == 1


def test_each_step_draws_its_own_augmentation():
  # The step's key is the run's key folded with the step number: the same
  # step draws the same shifts, the next step other ones.
  config = dataclasses.replace(TINY, augment="shift", max_shift=3)
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.random((32, 28, 28, 1), np.float32),
    "label": rng.integers(0, 10, 32).astype(np.int32),
  }
  state, steps = loop.prepare(config, batch["image"])
  losses = {}
  for step in (0, 0, 1, 2):
    at = state.replace(step=jnp.asarray(step, jnp.asarray(state.step).dtype))
    _, metrics = steps.train_step(at, batch)
    losses.setdefault(step, []).append(float(metrics["loss"]))
  assert losses[0][0] == losses[0][1]
  assert len({losses[0][0], losses[1][0], losses[2][0]}) == 3
