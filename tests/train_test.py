"""Tests of equivlab.train on tiny configs (the "mlp" model of models.py)."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from equivlab import train
from equivlab.training import steps as steps_lib

# 256 training examples, 8 steps of 32 per epoch, over 2 simulated devices.
TINY = train.TrainConfig(
  model="mlp",
  model_kwargs=(("hidden_sizes", (16,)),),
  train_limit=256,
  test_limit=100,
  num_epochs=2,
  batch_size=32,
  eval_batch_size=64,
  learning_rate=3e-3,
  checkpoint_every_steps=5,
  log_every_steps=2,
  num_devices=2,
  progress=False,
)


class _CountingSteps:
  """Wraps the step builders: counts builds, and traces per built step."""

  def __init__(self, monkeypatch):
    self.builds = 0
    original_train, original_eval = (
      steps_lib.train_step_fn,
      steps_lib.eval_step_fn,
    )

    def train_step_fn(*args):
      self.builds += 1
      chex.clear_trace_counter()
      return chex.assert_max_traces(original_train(*args), n=1)

    def eval_step_fn(*args):
      return chex.assert_max_traces(original_eval(*args), n=1)

    monkeypatch.setattr(steps_lib, "train_step_fn", train_step_fn)
    monkeypatch.setattr(steps_lib, "eval_step_fn", eval_step_fn)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One tiny run, each step traced once (else assert_max_traces fails)."""
  workdir = tmp_path_factory.mktemp("tiny")
  with pytest.MonkeyPatch.context() as monkeypatch:
    counter = _CountingSteps(monkeypatch)
    metrics = train.train_and_evaluate(TINY, workdir)
  assert counter.builds == 1
  return workdir, metrics


def test_each_run_builds_and_traces_its_steps_once(monkeypatch, tmp_path):
  counter = _CountingSteps(monkeypatch)
  # Two runs of 2 epochs in one process: one build and one trace per run
  # (none per epoch), and no cache shared between the runs.
  for seed in (0, 1):
    config = dataclasses.replace(TINY, seed=seed, num_devices=1)
    train.train_and_evaluate(config, tmp_path / str(seed))
  assert counter.builds == 2


def test_train_and_evaluate_learns_and_writes_its_files(tiny_run):
  workdir, metrics = tiny_run
  assert metrics["step"] == 16 and metrics["epoch"] == 2
  assert [h["epoch"] for h in metrics["history"]] == [1, 2]
  # 10 classes: chance is 0.1; two tiny epochs already do far better.
  assert metrics["test_accuracy"] > 0.4
  assert (
    metrics["history"][1]["train_loss"] < metrics["history"][0]["train_loss"]
  )
  assert metrics["num_params"] == 784 * 16 + 16 + 16 * 10 + 10
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  steps = [r["step"] for r in records if r["kind"] == "step"]
  assert steps == list(range(2, 17, 2))
  epochs = [r for r in records if r["kind"] == "epoch"]
  assert [r["test_accuracy"] for r in epochs] == [
    h["test_accuracy"] for h in metrics["history"]
  ]
  assert {"loss", "accuracy", "grad_norm", "learning_rate"} <= set(records[0])
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  # Checkpoints every 5 steps and at the end; the newest two are kept.
  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
  assert kept == [15, 16]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"] == "mlp" and saved["num_classes"] == 10


def test_same_seed_gives_identical_metrics_other_seed_does_not(
  tiny_run, tmp_path
):
  _, metrics = tiny_run
  again = train.train_and_evaluate(TINY, tmp_path / "again")
  assert again == metrics
  other = dataclasses.replace(TINY, seed=1)
  changed = train.train_and_evaluate(other, tmp_path / "other")
  assert changed["history"][0] != metrics["history"][0]


def test_rerun_of_a_finished_workdir_returns_its_metrics(tiny_run):
  workdir, metrics = tiny_run
  assert train.train_and_evaluate(TINY, workdir) == metrics


def test_load_variables_returns_config_and_float32_params(tiny_run):
  workdir, _ = tiny_run
  config, variables = train.load_variables(workdir)
  assert config.model == "mlp" and config.num_classes == 10
  assert config.model_kwargs == (("hidden_sizes", (16,)),)
  kernel = variables["params"]["Dense_0"]["kernel"]
  assert kernel.shape == (784, 16) and kernel.dtype == np.float32


def test_workdir_of_a_different_model_is_a_clear_error(tiny_run):
  workdir, _ = tiny_run
  other = dataclasses.replace(TINY, model="cnn", model_kwargs=())
  with pytest.raises(ValueError, match="holds a checkpoint of model 'mlp'"):
    train.train_and_evaluate(other, workdir)


def test_workdir_of_a_different_run_is_a_clear_error(tiny_run):
  workdir, _ = tiny_run
  other = dataclasses.replace(TINY, learning_rate=0.5)
  with pytest.raises(ValueError, match="learning_rate"):
    train.train_and_evaluate(other, workdir)


def test_batch_larger_than_the_data_is_a_clear_error(tmp_path):
  config = dataclasses.replace(TINY, train_limit=40, batch_size=64)
  with pytest.raises(ValueError, match="larger than the 40 training"):
    train.train_and_evaluate(config, tmp_path)


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
  config = dataclasses.replace(TINY, batch_size=30, num_devices=4)
  with pytest.raises(ValueError, match="not divisible by the 4 devices"):
    train.train_and_evaluate(config, tmp_path)


def test_unknown_model_is_a_clear_error(tmp_path):
  config = dataclasses.replace(TINY, model="resnet9000")
  with pytest.raises(ValueError, match="model must be one of"):
    train.train_and_evaluate(config, tmp_path)


def test_unknown_dataset_is_a_clear_error(tmp_path):
  config = dataclasses.replace(TINY, dataset="embedded_upside_down")
  with pytest.raises(ValueError, match="unknown embedded data set"):
    train.train_and_evaluate(config, tmp_path)


@pytest.mark.parametrize(
  ("field", "value"),
  [
    ("optimizer", "lbfgs"),
    ("schedule", "step"),
    ("loss", "hinge"),
    ("augment", "mixup"),
    ("compute_dtype", "float16"),
    ("batch_size", 0),
    ("learning_rate", -1.0),
    ("model_kwargs", 3),
  ],
)
def test_invalid_config_fields_are_clear_errors(field, value):
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(TINY, **{field: value})


def test_non_finite_loss_stops_naming_the_step_and_keeps_a_checkpoint(
  tmp_path,
):
  config = dataclasses.replace(
    TINY,
    optimizer="sgd",
    learning_rate=1e30,
    num_epochs=1,
    checkpoint_every_steps=1,
  )
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* step \d"):
    train.train_and_evaluate(config, tmp_path)
  _, variables = train.load_variables(tmp_path)
  leaves = jax.tree_util.tree_leaves(variables["params"])
  assert all(np.all(np.isfinite(leaf)) for leaf in leaves)


def _state(config, num_classes=10):
  """A fresh state of `config`'s model and the run's step functions."""
  config = dataclasses.replace(config, num_classes=num_classes)
  model = train.build_model(config)
  tx, _ = train.make_optimizer(config, total_steps=20)
  sample = jnp.zeros((2, 28, 28, 1))
  state = train.create_train_state(
    jax.random.PRNGKey(0), config, sample, model=model, tx=tx
  )
  return state, train.make_steps(model, tx, train.StepSpec.from_config(config))


def _batch(n=8):
  keys = jax.random.split(jax.random.PRNGKey(1))
  return {
    "image": jax.random.uniform(keys[0], (n, 28, 28, 1)),
    "label": jax.random.randint(keys[1], (n,), 0, 10),
  }


@pytest.mark.parametrize(
  ("optimizer", "schedule", "loss"),
  [
    ("sgd", "constant", "softmax_ce"),
    ("momentum", "cosine", "mse"),
    ("adam", "warmup_cosine", "softmax_ce"),
    ("rmsprop", "constant", "softmax_ce"),
    ("adagrad", "cosine", "mse"),
  ],
)
def test_every_optimizer_schedule_and_loss_lowers_the_loss(
  optimizer, schedule, loss
):
  config = dataclasses.replace(
    TINY,
    optimizer=optimizer,
    schedule=schedule,
    loss=loss,
    learning_rate=1e-3 if optimizer in ("adam", "rmsprop") else 0.05,
  )
  state, steps = _state(config)
  batch = _batch()
  first = steps.eval_step(state, batch)["loss"]
  for _ in range(5):
    state, metrics = steps.train_step(state, batch)
  assert np.isfinite(metrics["grad_norm"])
  assert steps.eval_step(state, batch)["loss"] < first
  assert int(state.step) == 5


@pytest.mark.parametrize("augment", train.AUGMENTS)
def test_augmentations_keep_shapes_and_change_images(augment):
  spec = train.StepSpec(augment=augment, max_shift=3, crop_padding=3)
  images = _batch()["image"]
  out = jax.jit(train.augment, static_argnums=0)(
    spec, jax.random.PRNGKey(3), images
  )
  assert out.shape == images.shape and out.dtype == images.dtype
  assert np.array_equal(out, images) == (augment == "none")


def test_decoupled_weight_decay_shrinks_kernels_only():
  config = dataclasses.replace(
    TINY, optimizer="sgd", learning_rate=0.1, weight_decay=0.5
  )
  tx, _ = train.make_optimizer(config, total_steps=10)
  params = {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.05 * np.ones((2, 3)))
  np.testing.assert_allclose(updates["bias"], np.zeros(3))


def test_l2_penalty_is_added_to_the_loss():
  l2 = 0.01
  state, steps = _state(dataclasses.replace(TINY, l2=l2))
  _, metrics = steps.train_step(state, _batch())
  kernels = [p for p in jax.tree_util.tree_leaves(state.params) if p.ndim > 1]
  penalty = 0.5 * l2 * sum(float(jnp.sum(k**2)) for k in kernels)
  np.testing.assert_allclose(
    metrics["loss"] - metrics["data_loss"], penalty, rtol=1e-4
  )


def test_warmup_cosine_schedule_rises_then_decays():
  config = dataclasses.replace(
    TINY, schedule="warmup_cosine", learning_rate=1.0, warmup_steps=5
  )
  schedule = train.make_schedule(config, total_steps=50)
  np.testing.assert_allclose(
    [schedule(0), schedule(5), schedule(50)], [0.0, 1.0, 0.0], atol=1e-6
  )


def test_bfloat16_compute_keeps_float32_params_and_batch_stats():
  config = dataclasses.replace(
    TINY,
    model="cnn",
    model_kwargs={"features": (4,), "dense_features": 8, "norm": "batch"},
    compute_dtype="bfloat16",
  )
  state, steps = _state(config)
  new_state, metrics = steps.train_step(state, _batch())
  for tree in (new_state.params, new_state.batch_stats, new_state.opt_state):
    for leaf in jax.tree_util.tree_leaves(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32
  assert np.isfinite(metrics["loss"])
  chex.assert_trees_all_equal_structs(new_state, state)


def test_eval_step_ignores_masked_padding():
  state, steps = _state(TINY)
  batch = _batch(6)
  exact = steps.eval_step(state, {**batch, "mask": jnp.ones(6, bool)})
  padded = {
    "image": jnp.concatenate([batch["image"], batch["image"][:2]]),
    "label": jnp.concatenate([batch["label"], (batch["label"][:2] + 1) % 10]),
    "mask": jnp.arange(8) < 6,
  }
  result = steps.eval_step(state, padded)
  np.testing.assert_allclose(result["loss"], exact["loss"], rtol=1e-6)
  np.testing.assert_allclose(result["accuracy"], exact["accuracy"])
  assert float(result["count"]) == 6.0


def test_train_step_matches_a_hand_written_sgd_step():
  config = dataclasses.replace(TINY, optimizer="sgd", learning_rate=0.1)
  state, steps = _state(config)
  model = train.build_model(dataclasses.replace(config, num_classes=10))
  batch = _batch()

  def loss_fn(params):
    logits = model.apply({"params": params}, batch["image"])
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["label"]
    ).mean()

  grads = jax.jit(jax.grad(loss_fn))(state.params)
  expected = jax.tree_util.tree_map(
    lambda p, g: p - 0.1 * g, state.params, grads
  )
  new_state, _ = steps.train_step(state, batch)
  chex.assert_trees_all_close(new_state.params, expected, atol=1e-6)


def test_images_the_model_cannot_take_are_a_clear_error():
  config = dataclasses.replace(TINY, model="z2cnn", model_kwargs=())
  with pytest.raises(ValueError, match="28"):
    train.create_train_state(
      jax.random.PRNGKey(0), config, jnp.zeros((2, 8, 8, 1))
    )


def test_load_variables_of_an_empty_workdir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    train.load_variables(tmp_path)


def test_prepare_starts_where_train_and_evaluate_starts(monkeypatch, tmp_path):
  from equivlab.training import state as state_lib  # noqa: PLC0415

  made = []
  original = state_lib.create_train_state

  def recording(*args, **kwargs):
    made.append(original(*args, **kwargs))
    return made[-1]

  monkeypatch.setattr(state_lib, "create_train_state", recording)
  config = dataclasses.replace(TINY, num_epochs=1, num_devices=1)
  train.train_and_evaluate(config, tmp_path)
  (engine_start,) = made
  prepared, _ = train.prepare(config, np.zeros((2, 28, 28, 1), np.float32))
  chex.assert_trees_all_equal(prepared, engine_start)
