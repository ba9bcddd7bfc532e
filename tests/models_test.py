"""Tests of equivlab.nn.models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.nn import models

# Counted once by hand for the small models and then pinned; Z2CNN:
# 3*3*1*20+20 + 5*(3*3*20*20+20) + 4*4*20*10+10 + 6*(20+20) batch norm.
PARAM_COUNTS = {
  "mlp": 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10,
  "cnn": 320 + 18_496 + 64 * 7 * 7 * 128 + 128 + 1_290,
  "cnn_gap": 160 + 4_640 + 2 * 9_248 + 330 + 2 * (16 + 32 + 32 + 32),
  "z2cnn": 21_750,
  "p4cnn": 24_680,
  "p4cnn_rotpool": 6_380,
  "p4mcnn": 26_799,
  "p4cnn_gap": 23_450,
  # 4 hidden layers of 128: 784*128+128 + 3*(128*128+128) + 128*10+10.
  "deep_mlp": 100_480 + 3 * 16_512 + 1_290,
  # A 3x3 stem of 16 and 3 more: 3*3*1*16+16 + 3*(3*3*16*16+16) + 16*10+10.
  "deep_cnn": 160 + 3 * 2_320 + 170,
}


def _shapes(name, image_shape=(28, 28, 1), **kwargs):
  model = models.get_model(name, **kwargs)
  x = jnp.zeros((2, *image_shape))
  return model, jax.eval_shape(
    lambda: model.init(jax.random.key(0), x, train=False)
  )


def _init(model, x):
  # One compilation instead of one per operation: much faster on CPU.
  return jax.jit(lambda k, x: model.init(k, x, train=False))(
    jax.random.key(0), x
  )


def _apply(model, variables, x, train=False, rngs=None):
  mutable = ["batch_stats"] if train else False
  return jax.jit(
    lambda v, x, r: model.apply(v, x, train=train, rngs=r, mutable=mutable)
  )(variables, x, rngs)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_parameter_counts_are_pinned(name):
  _, variables = _shapes(name)
  assert models.count_params(variables) == PARAM_COUNTS[name]


def test_paper_sizes():
  # Cohen & Welling 2016: Z2CNN about 22k, P4CNN about 25k parameters.
  assert 21_000 <= PARAM_COUNTS["z2cnn"] <= 23_000
  assert 24_000 <= PARAM_COUNTS["p4cnn"] <= 26_000


@pytest.mark.parametrize(
  "name", ["mlp", "cnn", "cnn_gap", "z2cnn", "p4cnn", "p4mcnn", "p4cnn_gap"]
)
def test_logit_shapes(name):
  model, shapes = _shapes(name, num_classes=7)
  out = jax.eval_shape(
    lambda v: model.apply(v, jnp.zeros((3, 28, 28, 1)), train=False), shapes
  )
  assert out.shape == (3, 7)


@pytest.mark.parametrize("norm", [None, "batch", "layer", "group", "instance"])
def test_cnn_norms_train_and_eval(norm):
  model = models.CNN(features=(8, 8), dense_features=16, norm=norm)
  x = jax.random.uniform(jax.random.key(1), (4, 12, 12, 1))
  variables = _init(model, x)
  logits, updates = _apply(model, variables, x, train=True)
  chex.assert_shape(logits, (4, 10))
  chex.assert_tree_all_finite(logits)
  assert ("batch_stats" in updates) == (norm == "batch")


def test_cnn_dropout_only_in_training():
  model = models.CNN(features=(4,), dense_features=32, dropout_rate=0.5)
  x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
  variables = _init(model, x)
  rngs = {"dropout": jax.random.key(2)}
  a = _apply(model, variables, x, rngs=rngs)
  b = _apply(model, variables, x)
  c, _ = _apply(model, variables, x, train=True, rngs=rngs)
  np.testing.assert_allclose(a, b, atol=0)
  assert not np.allclose(a, c)


@pytest.mark.parametrize(
  "name,std", [("lecun", 1 / 3), ("he", np.sqrt(2) / 3), ("normal", 0.01)]
)
def test_kernel_init_scales(name, std):
  # fan_in = 3*3*1 = 9 for the first conv; truncated normals are rescaled
  # to the stated variance.
  model = models.CNN(features=(512,), kernel_init=name)
  variables = _init(model, jnp.zeros((1, 4, 4, 1)))
  kernel = variables["params"]["Conv_0"]["kernel"]
  np.testing.assert_allclose(np.std(kernel), std, rtol=0.05)


def test_xavier_init_is_uniform_with_glorot_bound():
  model = models.CNN(features=(512,), kernel_init="xavier")
  variables = _init(model, jnp.zeros((1, 4, 4, 1)))
  kernel = np.asarray(variables["params"]["Conv_0"]["kernel"])
  bound = np.sqrt(6 / (9 * 1 + 9 * 512))
  assert np.abs(kernel).max() <= bound
  assert np.abs(kernel).max() > 0.95 * bound


def test_cnn_gap_is_invariant_to_circular_shifts():
  # Circular padding, stride 1 and a global average: exact invariance.
  model = models.get_model("cnn_gap")
  x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
  x = jnp.concatenate([x, jnp.roll(x, (3, -5), axis=(1, 2))])
  logits = _apply(model, _init(model, x), x)
  logits, moved = logits[:2], logits[2:]
  np.testing.assert_allclose(moved, logits, atol=1e-5, rtol=1e-5)


def test_dense_head_cnn_is_not_shift_invariant():
  model = models.get_model("cnn")
  x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
  x = jnp.concatenate([x, jnp.roll(x, (3, -5), axis=(1, 2))])
  logits = _apply(model, _init(model, x), x)
  logits, moved = logits[:2], logits[2:]
  assert np.max(np.abs(moved - logits)) > 1e-3


def test_z2cnn_takes_larger_images_and_trains_batch_stats():
  model = models.get_model("z2cnn")
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
  logits, updates = _apply(model, _init(model, x), x, train=True)
  chex.assert_shape(logits, (2, 10))
  assert len(updates["batch_stats"]) == 6


def test_apply_in_batches_matches_one_call():
  model = models.get_model("mlp", hidden_sizes=(16,))
  x = jax.random.uniform(jax.random.key(1), (7, 6, 6, 1))
  variables = model.init(jax.random.key(0), x)
  np.testing.assert_allclose(
    models.apply_in_batches(model, variables, x, batch_size=3),
    model.apply(variables, x),
    rtol=1e-6,
    atol=1e-6,
  )


def test_init_model_and_count_params_agree():
  model = models.get_model("mlp", hidden_sizes=(5,))
  variables = models.init_model(jax.random.key(0), model, (2, 2, 1))
  assert models.count_params(variables) == 4 * 5 + 5 + 5 * 10 + 10
  assert models.count_params(variables["params"]) == 85


def test_unknown_model_name():
  with pytest.raises(ValueError, match="model must be one of"):
    models.get_model("resnet")


@pytest.mark.parametrize(
  ("name", "kwargs", "error", "message"),
  [
    ("cnn", {"norm": "weight"}, ValueError, "norm must be one of"),
    ("cnn", {"kernel_init": "orthogonal"}, ValueError, "kernel_init must be"),
    ("cnn", {"head": "attention"}, ValueError, "head must be one of"),
    ("cnn", {"features": (4, 4), "dilations": (1,)}, ValueError, "per block"),
    ("cnn", {"features": "x"}, TypeError, "features must be a sequence"),
    ("cnn", {"features": (0,)}, ValueError, r"features\[0\] must be"),
    ("mlp", {"num_classes": 0}, ValueError, "num_classes must be an int >= 1"),
    ("mlp", {"num_classes": -3}, ValueError, "num_classes must be"),
    ("mlp", {"hidden_sizes": (16, 0)}, ValueError, "hidden_sizes"),
    ("mlp", {"dropout_rate": 1.0}, ValueError, "dropout_rate must be"),
    ("mlp", {"widths": (4,)}, ValueError, "unknown keyword arguments"),
    ("z2cnn", {"features": 0}, ValueError, "features must be an int >= 1"),
    ("p4cnn", {"features": 0}, ValueError, "features must be an int >= 1"),
    ("p4cnn", {"group": "p6"}, ValueError, "group must be one of"),
    ("p4cnn_gap", {"dilations": (1, 2)}, ValueError, "of one length"),
    ("deep_mlp", {"depth": 0}, ValueError, "depth must be an int >= 1"),
    ("deep_cnn", {"activation": "gelu"}, ValueError, "activation must be"),
  ],
)
def test_bad_model_settings_fail_when_the_model_is_made(
  name, kwargs, error, message
):
  with pytest.raises(error, match=message):
    models.get_model(name, **kwargs)


def test_unknown_keyword_lists_the_accepted_ones():
  with pytest.raises(ValueError, match=r"accepts \['dropout_rate', 'hidden"):
    models.get_model("mlp", widths=(4,))


@pytest.mark.parametrize(
  ("name", "shape", "message"),
  [
    ("p4cnn", (2, 20, 20, 1), r"square images \[N, H, H, C\] with H >= 28"),
    ("p4cnn", (2, 28, 30, 1), "square images"),
    ("p4mcnn", (2, 27, 27, 1), "H >= 28"),
    ("mlp", (2, 784), r"rank 4\), got shape \(2, 784\)"),
    ("cnn", (2, 784), "rank 4"),
  ],
)
def test_images_a_model_cannot_take_fail_at_init(name, shape, message):
  model = models.get_model(name)
  with pytest.raises(ValueError, match=message):
    model.init(jax.random.key(0), jnp.zeros(shape))


def test_z2cnn_rejects_small_images():
  model = models.get_model("z2cnn")
  with pytest.raises(ValueError, match="at least 28x28"):
    model.init(jax.random.key(0), jnp.zeros((1, 20, 20, 1)))


def test_cnn_rejects_images_smaller_than_its_pooling():
  model = models.CNN(features=(4, 4, 4))
  with pytest.raises(ValueError, match="at least 8x8"):
    model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))


def test_models_reject_unbatched_images():
  model = models.get_model("mlp")
  with pytest.raises(ValueError, match="rank 4"):
    model.init(jax.random.key(0), jnp.zeros((28, 28, 1)))


def test_apply_in_batches_rejects_bad_input():
  model = models.get_model("mlp", hidden_sizes=(4,))
  variables = models.init_model(jax.random.key(0), model, (4, 4, 1))
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    models.apply_in_batches(model, variables, np.zeros((4, 4, 1)))
  with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
    models.apply_in_batches(
      model, variables, np.zeros((1, 4, 4, 1)), batch_size=0
    )


def test_apply_in_batches_pads_the_last_batch_and_compiles_once():
  model = models.get_model("mlp", hidden_sizes=(4,))
  variables = models.init_model(jax.random.key(0), model, (4, 4, 1))
  images = jax.random.uniform(jax.random.key(1), (7, 4, 4, 1))
  whole = model.apply(variables, images, train=False)
  before = models._apply_eval._cache_size()
  out = models.apply_in_batches(model, variables, images, batch_size=3)
  # 3 + 3 + 1 rows: one shape, so one compilation, and the same logits.
  assert models._apply_eval._cache_size() == before + 1
  np.testing.assert_allclose(out, whole, rtol=1e-6, atol=1e-6)
  assert out.shape == (7, 10)
