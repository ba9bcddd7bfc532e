"""Two real JAX processes on localhost train data-parallel (issue 7).

Each test starts two Python interpreters that meet through
`jax.distributed` at 127.0.0.1 (CPU collectives: gloo), each with two
simulated CPU devices, so the mesh spans 4 devices in 2 processes. Every
subprocess runs under a hard timeout and is killed if it hangs.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from equivlab import data, parallel

_REPO = pathlib.Path(__file__).resolve().parent.parent
_TIMEOUT_S = 240
_NUM_PROCESSES = 2
_LOCAL_DEVICES = 2
_STEPS = 4
_GLOBAL_BATCH = 16


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _run_processes(argvs, env, workdir):
  """Starts one process per argv; kills them all if any hangs."""
  procs = []
  logs = []
  for i, argv in enumerate(argvs):
    log = open(workdir / f"log_{i}.txt", "w")  # noqa: SIM115
    logs.append(log)
    procs.append(
      subprocess.Popen(
        argv, cwd=_REPO, env=env, stdout=log, stderr=subprocess.STDOUT
      )
    )
  try:
    for proc in procs:
      proc.wait(timeout=_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  finally:
    for log in logs:
      log.close()
  outputs = [(workdir / f"log_{i}.txt").read_text() for i in range(len(argvs))]
  for proc, output in zip(procs, outputs, strict=True):
    assert proc.returncode == 0, f"rc={proc.returncode}\n{output[-3000:]}"
  return outputs


def _worker_env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={_LOCAL_DEVICES}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
    [str(_REPO), env.get("PYTHONPATH", "")]
  ).rstrip(os.pathsep)
  return env


# --- Training through equivlab.train's state and step ---------------------


def _config():
  from equivlab import train  # noqa: PLC0415 (engineer T's module)

  return train.TrainConfig(
    model="cnn",
    model_kwargs=(
      ("features", (4, 8)),
      ("dense_features", 16),
      ("norm", "batch"),
    ),
    batch_size=_GLOBAL_BATCH,
    optimizer="momentum",
    learning_rate=0.05,
  )


def _global_batches(process_count):
  """Global batch i = process 0's i-th local batch, then process 1's, ....

  Each process reads only its own contiguous shard of the embedded digits
  (`parallel.process_slice`), as a multi-host input pipeline would.
  """
  images, labels = data.embedded_digits("train")
  local = _GLOBAL_BATCH // process_count
  shards = []
  for p in range(process_count):
    rows = parallel.process_slice(len(labels), p, process_count)
    shards.append((images[rows], labels[rows]))
  for step in range(_STEPS):
    rows = slice(step * local, (step + 1) * local)
    yield [(im[rows], lb[rows]) for im, lb in shards]


def _train(mesh, local_batches):
  """`_STEPS` steps of `train.train_step`; returns (losses, params)."""
  from equivlab import train  # noqa: PLC0415

  state = train.create_train_state(
    jax.random.PRNGKey(0), _config(), np.zeros((2, 28, 28, 1), np.float32)
  )
  state = parallel.replicate(state, mesh)
  losses = []
  for image, label in local_batches:
    batch = parallel.shard_batch({"image": image, "label": label}, mesh)
    state, metrics = train.train_step(state, batch)
    losses.append(float(metrics["loss"].addressable_data(0)))
  params = jax.tree_util.tree_map(
    lambda a: np.asarray(a.addressable_data(0)),
    {"params": state.params, "batch_stats": state.batch_stats},
  )
  return losses, params


def _flat(params):
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _worker(address, process_id, workdir):
  """Entry point of one subprocess (see test_two_processes_*)."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  parallel.initialize_distributed(
    address, _NUM_PROCESSES, process_id, timeout_s=120
  )
  mesh = parallel.make_mesh()
  assert mesh.devices.size == _NUM_PROCESSES * _LOCAL_DEVICES
  mine = (parts[process_id] for parts in _global_batches(jax.process_count()))
  losses, params = _train(mesh, mine)
  workdir = pathlib.Path(workdir)
  np.savez(workdir / f"params_{process_id}.npz", **_flat(params))
  if parallel.is_primary():
    (workdir / "metrics.json").write_text(json.dumps({"loss": losses}))
  print("WORKER_DONE", process_id, jax.process_count(), jax.device_count())


def test_two_processes_train_to_identical_params(tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  argvs = [
    [
      sys.executable,
      "-c",
      "from tests.multiprocess_test import _worker; "
      f"_worker({address!r}, {pid}, {str(tmp_path)!r})",
    ]
    for pid in range(_NUM_PROCESSES)
  ]
  outputs = _run_processes(argvs, _worker_env(), tmp_path)
  for pid, output in enumerate(outputs):
    assert f"WORKER_DONE {pid} 2 4" in output, output[-3000:]

  # Only process 0 wrote metrics; both wrote their final parameters.
  assert (tmp_path / "metrics.json").exists()
  assert sorted(p.name for p in tmp_path.glob("*.json")) == ["metrics.json"]
  params = [np.load(tmp_path / f"params_{p}.npz") for p in range(2)]
  assert params[0].files == params[1].files and params[0].files
  for name in params[0].files:
    np.testing.assert_array_equal(params[0][name], params[1][name])

  # The same global batches on 4 devices of ONE process give the same run.
  mesh = parallel.make_mesh(4)
  whole = (
    (
      np.concatenate([p[0] for p in parts]),
      np.concatenate([p[1] for p in parts]),
    )
    for parts in _global_batches(_NUM_PROCESSES)
  )
  ref_losses, ref_params = _train(mesh, whole)
  losses = json.loads((tmp_path / "metrics.json").read_text())["loss"]
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for name, value in _flat(ref_params).items():
    np.testing.assert_allclose(params[0][name], value, rtol=1e-4, atol=1e-5)
