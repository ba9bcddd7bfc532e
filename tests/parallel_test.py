"""Tests for equivlab.parallel on 8 simulated CPU devices (see conftest.py)."""

import functools
import json
import os
import socket
import subprocess
import sys
import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from equivlab import data, parallel

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_eight_simulated_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("num_devices", [None, 1, 2, 8])
def test_make_mesh_sizes(num_devices):
  mesh = parallel.make_mesh(num_devices)
  expected = jax.device_count() if num_devices is None else num_devices
  assert mesh.devices.shape == (expected,)
  assert mesh.axis_names == ("data",)


def test_make_mesh_custom_axis_name():
  mesh = parallel.make_mesh(4, axis_name="batch")
  assert mesh.axis_names == ("batch",)
  assert parallel.data_sharding(mesh).spec == P("batch")


def test_make_mesh_too_many_devices():
  with pytest.raises(ValueError, match="num_devices=9 requested but only 8"):
    parallel.make_mesh(9)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4"])
def test_make_mesh_rejects_bad_count(bad):
  with pytest.raises(ValueError, match="num_devices must be a positive int"):
    parallel.make_mesh(bad)


def test_make_mesh_rejects_empty_axis_name():
  with pytest.raises(ValueError, match="axis_name must be a non-empty str"):
    parallel.make_mesh(2, axis_name="")


def test_shardings_specs():
  mesh = parallel.make_mesh(8)
  assert parallel.data_sharding(mesh).spec == P("data")
  assert parallel.replicated_sharding(mesh).spec == P()


def test_sharding_rejects_non_mesh():
  with pytest.raises(ValueError, match="mesh must be a jax.sharding.Mesh"):
    parallel.data_sharding("data")


def test_shard_batch_splits_leading_axis():
  mesh = parallel.make_mesh(4)
  batch = {
    "image": np.arange(8 * 3 * 3 * 1, dtype=np.float32).reshape(8, 3, 3, 1),
    "label": np.arange(8, dtype=np.int32),
  }
  sharded = parallel.shard_batch(batch, mesh)
  for name in batch:
    np.testing.assert_array_equal(np.asarray(sharded[name]), batch[name])
    assert sharded[name].sharding.spec == P("data")
  shards = sorted(
    sharded["label"].addressable_shards, key=lambda s: s.index[0].start
  )
  assert len(shards) == 4
  for i, shard in enumerate(shards):
    np.testing.assert_array_equal(np.asarray(shard.data), [2 * i, 2 * i + 1])


def test_shard_batch_not_divisible():
  mesh = parallel.make_mesh(8)
  batch = {"image": np.zeros((12, 2), np.float32), "label": np.zeros(12)}
  with pytest.raises(
    ValueError, match="batch size 12 is not divisible by the device count 8"
  ):
    parallel.shard_batch(batch, mesh)


def test_shard_batch_mismatched_leading_sizes():
  mesh = parallel.make_mesh(2)
  batch = {"image": np.zeros((4, 2)), "label": np.zeros(6)}
  with pytest.raises(ValueError, match=r"share the leading.*\[4, 6\]"):
    parallel.shard_batch(batch, mesh)


def test_shard_batch_rejects_scalar_leaf():
  mesh = parallel.make_mesh(2)
  with pytest.raises(ValueError, match="leading batch axis"):
    parallel.shard_batch({"x": np.zeros(()), "y": np.zeros(4)}, mesh)


def test_shard_batch_rejects_empty_batch():
  with pytest.raises(ValueError, match="at least one array, got none"):
    parallel.shard_batch({}, parallel.make_mesh(2))


def test_replicate_places_full_copies():
  mesh = parallel.make_mesh(8)
  tree = {"w": np.ones((3, 2), np.float32), "step": 0}
  out = parallel.replicate(tree, mesh)
  assert out["w"].sharding.spec == P()
  assert len(out["w"].addressable_shards) == 8
  for shard in out["w"].addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), tree["w"])
  assert int(out["step"]) == 0


def test_jit_mean_over_sharded_batch_is_global():
  # GSPMD: a batch mean of a sharded array is the mean over ALL rows.
  mesh = parallel.make_mesh(8)
  x = np.arange(16, dtype=np.float32).reshape(16, 1)
  w = parallel.replicate(jnp.ones((1, 1)), mesh)
  mean = jax.jit(lambda w, x: jnp.mean(x * w))(w, parallel.shard_batch(x, mesh))
  np.testing.assert_allclose(float(mean), 7.5, rtol=1e-6)


@pytest.mark.parametrize(
  "count,index,expected",
  [(1, 0, slice(0, 10)), (2, 0, slice(0, 5)), (2, 1, slice(5, 10)),
   (3, 2, slice(6, 9))],
)  # fmt: skip
def test_process_slice(count, index, expected):
  assert parallel.process_slice(10, index, count) == expected


def test_process_slice_partition_is_disjoint_and_equal():
  slices = [parallel.process_slice(4000, i, 3) for i in range(3)]
  covered = np.concatenate([np.arange(4000)[s] for s in slices])
  assert len(set(covered.tolist())) == len(covered) == 3 * 1333


def test_process_slice_defaults_to_this_process():
  assert parallel.process_slice(6) == slice(0, 6)


@pytest.mark.parametrize(
  "args,match",
  [((10, 2, 2), r"process_index must be an int in \[0, 2\), got 2"),
   ((10, -1, 2), r"process_index must be an int in \[0, 2\), got -1"),
   ((10, 0, 0), "process_count must be an int >= 1, got 0"),
   ((1, 0, 2), r"num_examples must be an int >= process_count \(2\), got 1")],
)  # fmt: skip
def test_process_slice_bad_input(args, match):
  with pytest.raises(ValueError, match=match):
    parallel.process_slice(*args)


def test_is_primary_single_process():
  assert parallel.is_primary()


def test_local_batch_size():
  mesh = parallel.make_mesh(8)
  assert parallel.local_batch_size(32, mesh) == 32
  with pytest.raises(ValueError, match="30 is not divisible by the device"):
    parallel.local_batch_size(30, mesh)


@pytest.mark.parametrize(
  "kwargs,match",
  [(dict(process_id=2, num_processes=2),
    r"process_id must be an int in \[0, 2\) .* got 2"),
   (dict(process_id=-1), r"process_id must be an int in \[0, 2\)"),
   (dict(num_processes=0), "num_processes must be an int >= 1, got 0"),
   (dict(coordinator_address="127.0.0.1"), "must be a 'host:port' string"),
   (dict(coordinator_address="127.0.0.1:x"), "port in 1..65535"),
   (dict(coordinator_address="127.0.0.1:70000"), "port in 1..65535"),
   (dict(coordinator_address=1234), "must be a 'host:port' string"),
   (dict(timeout_s=0), "timeout_s must be a positive number, got 0"),
   (dict(timeout_s=float("nan")), "timeout_s must be a positive number"),
   (dict(coordinator_address=None), "must be all set or all None")],
)  # fmt: skip
def test_initialize_distributed_bad_input(kwargs, match):
  # Validation happens before jax.distributed is touched, so this is safe
  # inside the test process.
  args = dict(coordinator_address="127.0.0.1:1234", num_processes=2)
  args.update(process_id=1, timeout_s=5)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    parallel.initialize_distributed(
      args.pop("coordinator_address"),
      args.pop("num_processes"),
      args.pop("process_id"),
      **args,
    )


def test_initialize_distributed_port_taken_on_process_0():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("", 0))
    sock.listen()
    port = sock.getsockname()[1]
    with pytest.raises(ValueError, match=f"port {port}, but that port cannot"):
      parallel.initialize_distributed(f"127.0.0.1:{port}", 2, 0, timeout_s=5)


def test_initialize_distributed_unreachable_or_undetected_cluster():
  # A hung or aborting distributed client must never take the suite down:
  # run it in its own interpreter under a hard timeout.
  port = _free_port()  # Nothing listens here.
  script = textwrap.dedent(f"""
    import time
    from equivlab import parallel
    try:  # No Slurm, MPI or TPU here: auto-detection must say so.
      parallel.initialize_distributed(None, None, None, timeout_s=2)
    except ValueError as error:
      print("AUTO", error)
    start = time.monotonic()
    try:
      parallel.initialize_distributed(
        "127.0.0.1:{port}", num_processes=2, process_id=1, timeout_s=2)
    except TimeoutError as error:
      print("TIMEOUT", round(time.monotonic() - start, 1), error)
    else:
      print("CONNECTED")
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=_REPO,
    env=env,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  auto, timeout = result.stdout.splitlines()[:2]
  assert auto.startswith("AUTO auto-detecting"), result.stdout
  assert "found no cluster environment" in auto
  assert timeout.startswith("TIMEOUT"), result.stdout + result.stderr
  assert f"coordinator at 127.0.0.1:{port}" in timeout
  assert "within 2 s" in timeout


# --- Data-parallel training equals single-device training -----------------

_STEPS = 20
_GLOBAL_BATCH = 16


class _TinyNet(nn.Module):
  """A conv net small enough for CI, with batch norm after the conv."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    # Batch norm cancels a conv bias (its gradient is rounding noise).
    x = nn.Conv(4, (3, 3), strides=(2, 2), use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(10)(x)


def _digit_batches():
  images, labels = data.embedded_digits("train")
  n = _STEPS * _GLOBAL_BATCH
  images = images[:n, ::2, ::2].reshape(_STEPS, _GLOBAL_BATCH, 14, 14, 1)
  labels = labels[:n].reshape(_STEPS, _GLOBAL_BATCH)
  return images, labels


def _make_step(model, tx):
  def loss_fn(params, batch_stats, batch):
    logits, updates = model.apply(
      {"params": params, "batch_stats": batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    batch_stats = updates["batch_stats"]
    loss = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["label"]
    ).mean()
    return loss, batch_stats

  def step(state, batch):
    params, batch_stats, opt_state = state
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, batch_stats, batch
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, batch_stats, opt_state), loss

  return step


def _train_gspmd(num_devices):
  """20 steps under jit with a sharded batch and replicated state."""
  model = _TinyNet()
  tx = optax.sgd(0.1, momentum=0.9)
  images, labels = _digit_batches()
  variables = model.init(jax.random.key(0), images[0], train=False)
  params = variables["params"]
  state = (params, variables["batch_stats"], tx.init(params))
  mesh = parallel.make_mesh(num_devices)
  state = parallel.replicate(state, mesh)
  traces = []
  inner = _make_step(model, tx)

  def counted(state, batch):
    traces.append(1)  # Runs at trace time only.
    return inner(state, batch)

  step = jax.jit(counted, out_shardings=parallel.replicated_sharding(mesh))
  losses = []
  for i in range(_STEPS):
    batch = parallel.shard_batch({"image": images[i], "label": labels[i]}, mesh)
    state, loss = step(state, batch)
    losses.append(loss)
  assert len(traces) == 1  # No recompiles: shardings are stable.
  assert state[0]["Dense_0"]["kernel"].sharding.spec == P()
  return np.asarray(losses), jax.device_get(state)


@functools.cache
def _single_device_run():
  return _train_gspmd(num_devices=1)


def test_data_parallel_trajectory_equals_single_device():
  # Batch norm makes this strict: per-device statistics would differ.
  single_losses, single_state = _single_device_run()
  multi_losses, multi_state = _train_gspmd(num_devices=8)
  assert single_losses[-1] < single_losses[0]  # It does train.
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
  chex.assert_trees_all_close(multi_state, single_state, rtol=1e-4, atol=1e-6)


def test_shard_map_with_pmean_equals_single_device():
  # The explicit form of synchronous data parallelism: per-device gradients
  # averaged with an all-reduce (pmean), batch norm statistics pmean'd over
  # the data axis.
  num_devices = 8
  model = _TinyNet()
  tx = optax.sgd(0.1, momentum=0.9)
  images, labels = _digit_batches()
  variables = model.init(jax.random.key(0), images[0], train=False)
  state = (variables["params"], variables["batch_stats"])
  state = state + (tx.init(variables["params"]),)
  mesh = parallel.make_mesh(num_devices)
  cross_device_model = _TinyNetAxis(axis_name="data")

  def local_step(state, batch):
    params, batch_stats, opt_state = state

    def loss_fn(params):
      logits, updates = cross_device_model.apply(
        {"params": params, "batch_stats": batch_stats},
        batch["image"],
        train=True,
        mutable=["batch_stats"],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]
      ).mean()
      return loss, updates["batch_stats"]

    # Mark the replicated parameters as per-device values, so that grad
    # returns each device's own gradient instead of an implicitly summed one.
    local_params = jax.lax.pcast(params, "data", to="varying")
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      local_params
    )
    grads = jax.lax.pmean(grads, "data")  # all_reduce(SUM) / N.
    loss = jax.lax.pmean(loss, "data")
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_stats, opt_state), loss

  step = jax.jit(
    jax.shard_map(
      local_step,
      mesh=mesh,
      in_specs=(P(), P("data")),
      out_specs=(P(), P()),
    )
  )
  state = parallel.replicate(state, mesh)
  losses = []
  for i in range(_STEPS):
    batch = parallel.shard_batch({"image": images[i], "label": labels[i]}, mesh)
    state, loss = step(state, batch)
    losses.append(loss)
  single_losses, single_state = _single_device_run()
  np.testing.assert_allclose(np.asarray(losses), single_losses, rtol=1e-5)
  chex.assert_trees_all_close(
    jax.device_get(state), single_state, rtol=1e-4, atol=1e-6
  )


class _TinyNetAxis(nn.Module):
  """`_TinyNet` whose statistics are pmean'd on an axis."""

  axis_name: str

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), strides=(2, 2), use_bias=False, name="Conv_0")(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      axis_name=self.axis_name,
      name="BatchNorm_0",
    )(x)
    x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(10, name="Dense_0")(x)


# --- The same equality through equivlab.train's own loop -------------------


def _train_loop_run(tmp_path, num_devices):
  from equivlab import train  # noqa: PLC0415

  config = train.TrainConfig(
    model="cnn",
    model_kwargs=(
      ("features", (4, 8)),
      ("dense_features", 16),
      ("norm", "batch"),
    ),
    num_epochs=1,
    batch_size=_GLOBAL_BATCH,
    train_limit=_STEPS * _GLOBAL_BATCH,
    test_limit=64,
    eval_batch_size=32,
    optimizer="momentum",
    learning_rate=0.05,
    num_devices=num_devices,
    log_every_steps=1,
    checkpoint_every_steps=1000,
    progress=False,
  )
  workdir = tmp_path / f"devices{num_devices}"
  final = train.train_and_evaluate(config, workdir)
  records = [
    json.loads(line)
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
  ]
  losses = [r["loss"] for r in records if r["kind"] == "step"]
  return np.asarray(losses), final, final.variables


def test_train_and_evaluate_8_devices_equals_1(tmp_path):
  losses_1, final_1, variables_1 = _train_loop_run(tmp_path, 1)
  losses_8, final_8, variables_8 = _train_loop_run(tmp_path, 8)
  assert len(losses_1) == _STEPS and losses_1[-1] < losses_1[0]
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  for name in ("train_loss", "test_loss", "test_accuracy"):
    np.testing.assert_allclose(final_8[name], final_1[name], rtol=1e-5)
  chex.assert_trees_all_close(variables_8, variables_1, rtol=1e-4, atol=1e-5)


def test_scaling_benchmark_smoke():
  from benchmarks import scaling  # noqa: PLC0415
  from equivlab import train  # noqa: PLC0415

  config = train.TrainConfig(
    model="mlp", model_kwargs=(("hidden_sizes", (8,)),), batch_size=8
  )
  images = np.zeros((8, 28, 28, 1), np.float32)
  labels = np.zeros(8, np.int32)
  rows = [
    scaling.time_device_count(2, config, images, labels, steps=1, repeats=1)
  ]
  for row in rows:
    row.update(speedup=1.0, efficiency=1.0)
  table = scaling.format_rows(rows, "header")
  assert table.startswith("header\n\n| devices | global batch | steps/s")
  assert all(
    row["steps_per_s"] > 0 and row["global_batch"] == 8 for row in rows
  )
