"""Tests of equivlab.train on tiny configs (the "mlp" model of models.py)."""

import dataclasses
import json
import pickle

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


def _records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_rerun_of_a_finished_workdir_returns_its_metrics(tiny_run):
  workdir, metrics = tiny_run
  before = _records(workdir)
  assert train.train_and_evaluate(TINY, workdir) == metrics
  assert _records(workdir) == before  # No "resume" event, nothing else.


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
    ("compute_dtype", "float64"),
    ("loss_scale_init", 0.5),
    ("loss_scale_period", 0),
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
  with pytest.raises(
    train.NonFiniteLossError, match=r"non-finite loss .* step \d"
  ) as info:
    train.train_and_evaluate(config, tmp_path)
  error = info.value
  assert isinstance(error, FloatingPointError)
  assert error.step >= 1 and not np.isfinite(error.loss)
  assert f"at step {error.step}" in str(error)
  copy = pickle.loads(pickle.dumps(error))
  assert (copy.step, str(copy)) == (error.step, str(error))
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
  from equivlab.training import loop  # noqa: PLC0415
  from equivlab.training import state as state_lib  # noqa: PLC0415

  made, prepared, built = [], [], []
  original = state_lib.create_train_state
  original_prepare, original_build = loop.prepare, state_lib.build_model

  def recording(*args, **kwargs):
    made.append(original(*args, **kwargs))
    return made[-1]

  def preparing(*args, **kwargs):
    prepared.append(kwargs)
    return original_prepare(*args, **kwargs)

  def building(*args, **kwargs):
    built.append(args)
    return original_build(*args, **kwargs)

  monkeypatch.setattr(state_lib, "create_train_state", recording)
  monkeypatch.setattr(state_lib, "build_model", building)
  monkeypatch.setattr(loop, "prepare", preparing)
  config = dataclasses.replace(TINY, num_epochs=1, num_devices=1)
  train.train_and_evaluate(config, tmp_path)
  # The loop starts through `prepare`, with its optimizer and the model it
  # built once.
  (engine_start,) = made
  ((start,),) = (prepared,)
  assert start["tx"] is not None and start["model"] is not None
  assert len(built) == 1
  again, _ = train.prepare(config, np.zeros((2, 28, 28, 1), np.float32))
  chex.assert_trees_all_equal(again, engine_start)


def test_training_loss_is_the_data_loss_plus_the_penalty():
  config = dataclasses.replace(TINY, num_classes=10)
  state, _ = _state(config)
  model = train.build_model(config)
  batch = _batch()
  logits = model.apply({"params": state.params}, batch["image"])
  one_hot = jax.nn.one_hot(batch["label"], 10)
  squares = sum(
    jnp.sum(jnp.square(w))
    for w in jax.tree_util.tree_leaves(state.params)
    if w.ndim >= 2
  )
  spec = train.StepSpec(loss="mse", l2=0.01)
  loss, aux = train.training_loss(
    model, state.params, batch["image"], batch["label"], spec=spec
  )
  data_loss = jnp.mean(jnp.square(logits - one_hot))
  np.testing.assert_allclose(aux.data_loss, data_loss, rtol=1e-6)
  np.testing.assert_allclose(loss, data_loss + 0.005 * squares, rtol=1e-6)
  np.testing.assert_allclose(aux.logits, logits, rtol=1e-6)
  assert aux.batch_stats == {}


# ---------------------------------------------------------------------------
# float16 compute with dynamic loss scaling.
# ---------------------------------------------------------------------------

FLOAT16 = dataclasses.replace(
  TINY,
  model="cnn",
  model_kwargs={"features": (4,), "dense_features": 8, "norm": "batch"},
  compute_dtype="float16",
)


def _tree_bytes_equal(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_float16_state_starts_with_the_configured_loss_scale():
  state, _ = _state(dataclasses.replace(FLOAT16, loss_scale_init=2.0**9))
  assert float(state.loss_scale["scale"]) == 512.0
  assert state.loss_scale["scale"].dtype == jnp.float32
  assert int(state.loss_scale["counter"]) == 0
  for tree in (state.params, state.opt_state):
    for leaf in jax.tree_util.tree_leaves(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32  # float32 master weights.
  float32_state, _ = _state(
    dataclasses.replace(FLOAT16, compute_dtype="float32")
  )
  assert float32_state.loss_scale == {}


def test_float16_step_with_overflowing_gradients_is_skipped():
  # At a scale of 2**40 the loss's cotangent (~scale / batch) overflows
  # float16 (largest finite value 65504) on its way into the network: the
  # gradients are inf/NaN, so the step must change nothing but the step
  # count and halve the scale.
  config = dataclasses.replace(FLOAT16, loss_scale_init=2.0**40)
  state, steps = _state(config)
  new_state, metrics = steps.train_step(state, _batch())
  assert not np.isfinite(metrics["grad_norm"])
  assert float(metrics["skipped"]) == 1.0
  assert float(metrics["loss_scale"]) == 2.0**40
  assert np.isfinite(metrics["loss"])  # The forward pass did not overflow.
  _tree_bytes_equal(new_state.params, state.params)
  _tree_bytes_equal(new_state.batch_stats, state.batch_stats)
  _tree_bytes_equal(new_state.opt_state, state.opt_state)
  assert int(new_state.step) == 1
  assert float(new_state.loss_scale["scale"]) == 2.0**39
  assert int(new_state.loss_scale["counter"]) == 0
  chex.assert_trees_all_equal_structs(new_state, state)


def test_float16_halves_the_scale_until_finite_then_trains():
  config = dataclasses.replace(FLOAT16, loss_scale_init=2.0**40)
  state, steps = _state(config)
  batch = _batch(32)
  scales, skipped, losses = [], [], []
  for _ in range(60):
    state, metrics = steps.train_step(state, batch)
    scales.append(float(metrics["loss_scale"]))
    skipped.append(float(metrics["skipped"]))
    losses.append(float(metrics["loss"]))
  first_good = skipped.index(0.0)
  # Skipped steps come first, each at half the scale of the one before;
  # after the first finite step a skip is rare (a gradient can still
  # overflow at the scale that just fitted), halves the scale again, and
  # finite steps keep it (the period of doubling is longer than the run).
  assert 5 < first_good < 40
  assert skipped[:first_good] == [1.0] * first_good
  assert sum(skipped[first_good:]) <= 2
  for t in range(1, 60):
    assert scales[t] == scales[t - 1] / (2.0 if skipped[t - 1] else 1.0)
  assert scales[0] == 2.0**40
  assert losses[first_good] == losses[0]  # Skipped steps learned nothing.
  assert losses[-1] < 0.7 * losses[first_good]  # Then it trains.


def test_float16_doubles_the_scale_after_period_finite_steps():
  config = dataclasses.replace(
    FLOAT16, loss_scale_init=2.0**6, loss_scale_period=3
  )
  state, steps = _state(config)
  scales, counters = [], []
  for _ in range(7):
    state, metrics = steps.train_step(state, _batch())
    assert float(metrics["skipped"]) == 0.0
    scales.append(float(state.loss_scale["scale"]))
    counters.append(int(state.loss_scale["counter"]))
  assert scales == [64.0, 64.0, 128.0, 128.0, 128.0, 256.0, 256.0]
  assert counters == [1, 2, 0, 1, 2, 0, 1]


def test_float16_step_matches_the_float32_step_to_half_precision():
  # The loss scale is divided out again: one SGD step in float16 moves
  # the float32 master weights as the float32 step does, up to float16
  # rounding of the activations and gradients (about 1e-3 relative).
  config = dataclasses.replace(FLOAT16, optimizer="sgd", learning_rate=0.1)
  updates = {}
  for dtype, scale in (("float32", 1.0), ("float16", 2.0**12)):
    state, steps = _state(
      dataclasses.replace(config, compute_dtype=dtype, loss_scale_init=scale)
    )
    new_state, _ = steps.train_step(state, _batch())
    updates[dtype] = jax.tree_util.tree_map(
      lambda a, b: np.asarray(a - b), new_state.params, state.params
    )
  # Per entry against the largest update anywhere: entries whose gradient
  # cancels (the convolution's bias feeds batch norm, so its exact gradient
  # is 0) keep a float16 residue of a few percent of the largest update.
  half, full = (
    jax.tree_util.tree_leaves(updates[d]) for d in ("float16", "float32")
  )
  largest = max(np.abs(u).max() for u in full)
  for a, b in zip(half, full, strict=True):
    np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05 * largest)
  diff = np.sqrt(
    sum(np.sum((a - b) ** 2) for a, b in zip(half, full, strict=True))
  )
  assert diff < 0.01 * np.sqrt(sum(np.sum(b**2) for b in full))


def test_float16_steps_need_a_float16_state():
  state, _ = _state(dataclasses.replace(FLOAT16, compute_dtype="float32"))
  _, steps = _state(FLOAT16)
  with pytest.raises(ValueError, match="needs the state's loss scale"):
    steps.train_step(state, _batch())


def _interrupted_after(monkeypatch, calls: int):
  """Makes the next run's train step raise after `calls` steps."""
  make_steps = steps_lib.make_steps
  seen = []

  def interrupting(*args):
    steps = make_steps(*args)

    def step(state, batch):
      seen.append(1)
      if len(seen) > calls:
        raise KeyboardInterrupt("interrupted by the test")
      return steps.train_step(state, batch)

    return steps._replace(train_step=step)

  monkeypatch.setattr(steps_lib, "make_steps", interrupting)


def test_float16_interrupted_run_resumes_bitwise_with_its_loss_scale(
  monkeypatch, tmp_path
):
  # The first steps overflow (2**24 is too large for these gradients) and
  # the scale falls; a period of 3 raises it again: the scale moves on
  # either side of the checkpoint at step 8, so a resume that restarted it
  # would take other steps.
  config = dataclasses.replace(
    FLOAT16,
    loss_scale_init=2.0**24,
    loss_scale_period=3,
    checkpoint_every_steps=4,
    max_checkpoints=10,
    log_every_steps=1,
  )
  with monkeypatch.context() as patch:
    _interrupted_after(patch, 10)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, tmp_path / "interrupted")
  resumed = train.train_and_evaluate(config, tmp_path / "interrupted")
  whole = train.train_and_evaluate(config, tmp_path / "whole")
  assert resumed == whole
  _tree_bytes_equal(resumed.state, whole.state)

  def records(name):
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]

  steps = [r for r in records("whole") if r["kind"] == "step"]
  assert [r for r in records("interrupted") if r["kind"] == "step"] == steps
  resumes = [r["step"] for r in records("interrupted") if r["kind"] == "resume"]
  assert resumes == [8]
  scales = [r["loss_scale"] for r in steps]
  assert any(r["skipped"] for r in steps[:8])
  assert len(set(scales[:8])) > 1 and len(set(scales[8:])) > 1
  assert scales[8] != config.loss_scale_init


def test_workdir_from_before_the_loss_scale_fields_still_resumes(
  monkeypatch, tmp_path
):
  # A checkpoint's config written before `loss_scale_init` and
  # `loss_scale_period` existed: the missing fields count as defaults.
  config = dataclasses.replace(TINY, num_epochs=1, num_devices=1)
  to_json = train.TrainConfig.to_json

  def old_to_json(self):
    fields = to_json(self)
    for name in ("loss_scale_init", "loss_scale_period"):
      del fields[name]
    return fields

  with monkeypatch.context() as patch:
    patch.setattr(train.TrainConfig, "to_json", old_to_json)
    before = train.train_and_evaluate(config, tmp_path)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert "loss_scale_init" not in saved
  assert train.train_and_evaluate(config, tmp_path) == before
  other = dataclasses.replace(config, loss_scale_period=7)
  with pytest.raises(ValueError, match="loss_scale_period: saved 2000"):
    train.train_and_evaluate(other, tmp_path)


def test_from_fields_takes_the_fields_named_as_a_configs():
  @dataclasses.dataclass(frozen=True)
  class Study:
    num_epochs: int = 3
    batch_size: int = 16
    width: int = 7  # not a TrainConfig field: ignored

  config = train.TrainConfig.from_fields(Study(), schedule="cosine")
  assert (config.num_epochs, config.batch_size) == (3, 16)
  assert config.schedule == "cosine" and not hasattr(config, "width")
  mapped = train.TrainConfig.from_fields({"learning_rate": 0.5, "x": 1})
  assert mapped.learning_rate == 0.5
  with pytest.raises(ValueError, match="num_epochs must be an int >= 1"):
    train.TrainConfig.from_fields(Study(num_epochs=0))
  with pytest.raises(TypeError, match="dataclass instance or a mapping"):
    train.TrainConfig.from_fields(Study)


def test_read_metrics_reads_the_records_of_a_kind(tiny_run):
  workdir, metrics = tiny_run
  epochs = train.read_metrics(workdir, "epoch")
  assert [r["step"] for r in epochs] == [8, 16]
  assert epochs[-1]["test_accuracy"] == metrics["test_accuracy"]
  assert len(train.read_metrics(workdir)) > len(epochs)


def test_init_key_is_the_key_a_run_starts_from(monkeypatch, tmp_path):
  from equivlab.training import state as state_lib  # noqa: PLC0415

  keys = []
  original = state_lib.create_train_state

  def recording(key, *args, **kwargs):
    keys.append(np.asarray(key))
    return original(key, *args, **kwargs)

  monkeypatch.setattr(state_lib, "create_train_state", recording)
  config = dataclasses.replace(TINY, num_epochs=1, num_devices=1, seed=3)
  train.train_and_evaluate(config, tmp_path)
  np.testing.assert_array_equal(keys[0], train.init_key(config))
  other = train.init_key(dataclasses.replace(config, seed=4))
  assert not np.array_equal(keys[0], other)
