"""Data parallelism over devices and hosts with JAX's own sharding runtime.

Synchronous data-parallel SGD (Goyal et al. 2017, "Accurate, Large
Minibatch SGD") averages gradients across workers: an all-reduce sum
(`dist.all_reduce(g, op=SUM)`) followed by a division by the worker count.
Here the same average comes from GSPMD: the batch is sharded along a "data"
mesh axis, parameters are replicated, and `jax.jit` of an ordinary
(single-device) train step inserts the all-reduce itself. Because the program
is written for the global batch, a mean over the batch axis (the loss, batch
norm statistics) is a mean over the GLOBAL batch, so a data-parallel run
computes the same numbers as one device holding the whole batch.

Across hosts, `initialize_distributed` starts `jax.distributed`; each process
then reads its own slice of the data (`process_slice`), `shard_batch`
assembles the per-process slices into one global array, and only the primary
process (`is_primary`) writes metrics and checkpoints.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from equivlab.checks import is_int

DATA_AXIS = "data"


def _mesh_devices(num_devices: int) -> list[jax.Device]:
  """`num_devices` devices, the same number from every process."""
  devices = jax.devices()
  process_count = jax.process_count()
  if process_count == 1:
    return list(devices[:num_devices])
  if num_devices % process_count:
    raise ValueError(
      f"num_devices must be a multiple of the process count "
      f"({process_count}) so every process holds part of the batch, got "
      f"{num_devices}."
    )
  per_process = num_devices // process_count
  chosen = []
  for index in range(process_count):
    owned = [d for d in devices if d.process_index == index]
    chosen.extend(owned[:per_process])
  return chosen


def make_mesh(
  num_devices: int | None = None, axis_name: str = DATA_AXIS
) -> Mesh:
  """A one-axis device mesh for data parallelism.

  Args:
    num_devices: how many devices to use; None uses every device of every
      process (`jax.device_count()`). In a multi-process run it must be a
      multiple of `jax.process_count()`; each process contributes the same
      number of its local devices.
    axis_name: the name of the mesh axis the batch is split along.

  Returns:
    A `jax.sharding.Mesh` of shape `[num_devices]` with axis `axis_name`.

  Raises:
    ValueError: if `num_devices` is not a positive int, exceeds the devices
      available, or (multi-process) is not a multiple of the process count;
      or if `axis_name` is not a non-empty string.
  """
  if not isinstance(axis_name, str) or not axis_name:
    raise ValueError(f"axis_name must be a non-empty str, got {axis_name!r}.")
  available = jax.device_count()
  if num_devices is None:
    num_devices = available
  if not is_int(num_devices) or num_devices < 1:
    raise ValueError(
      f"num_devices must be a positive int or None, got {num_devices!r}."
    )
  if num_devices > available:
    raise ValueError(
      f"num_devices={num_devices} requested but only {available} devices "
      f"are available ({jax.default_backend()} backend; on CPU, simulate "
      "more with XLA_FLAGS=--xla_force_host_platform_device_count=N before "
      "jax starts)."
    )
  devices = _mesh_devices(int(num_devices))
  return Mesh(np.array(devices), (axis_name,))


def _data_axis(mesh: Mesh) -> str:
  if not isinstance(mesh, Mesh):
    raise ValueError(
      f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}."
    )
  if len(mesh.axis_names) != 1:
    raise ValueError(
      f"expected a one-axis data mesh, got axes {mesh.axis_names}."
    )
  return mesh.axis_names[0]


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh's data axis, the rest whole.

  Args:
    mesh: a one-axis mesh from `make_mesh`.

  Returns:
    `NamedSharding(mesh, P(axis))`: device i holds rows
    `[i * N / D, (i + 1) * N / D)` of an `[N, ...]` array on D devices.
  """
  return NamedSharding(mesh, P(_data_axis(mesh)))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, optimizer state).

  Args:
    mesh: a one-axis mesh from `make_mesh`.

  Returns:
    `NamedSharding(mesh, P())`.
  """
  _data_axis(mesh)
  return NamedSharding(mesh, P())


def _local_device_count(mesh: Mesh) -> int:
  index = jax.process_index()
  return sum(d.process_index == index for d in mesh.devices.flat)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Splits every leaf of a batch along its leading axis over the mesh.

  In a single-process run `batch` is the global batch. In a multi-process
  run each process passes its OWN part (e.g. the rows `process_slice`
  gives it); the parts are stacked in process order into one global array
  whose leading size is the sum over processes.

  Args:
    batch: a pytree of arrays, each `[N, ...]` with the same `N` (e.g.
      `{"image": [N, H, W, C], "label": [N]}`).
    mesh: a one-axis mesh from `make_mesh`.

  Returns:
    The same pytree of `jax.Array`s with `data_sharding(mesh)`.

  Raises:
    ValueError: if a leaf is a scalar, the leaves disagree on `N`, or `N` is
      not divisible by the number of (this process's) devices in the mesh.
  """
  sharding = data_sharding(mesh)
  leaves, treedef = jax.tree_util.tree_flatten(batch)
  if not leaves:
    raise ValueError("batch must contain at least one array, got none.")
  sizes = set()
  for leaf in leaves:
    shape = np.shape(leaf)
    if not shape:
      raise ValueError(
        "every batch leaf needs a leading batch axis, got a scalar leaf."
      )
    sizes.add(shape[0])
  if len(sizes) != 1:
    raise ValueError(
      f"batch leaves must share the leading (batch) size, got {sorted(sizes)}."
    )
  (size,) = sizes
  multi = jax.process_count() > 1
  num_devices = _local_device_count(mesh) if multi else mesh.devices.size
  if size % num_devices:
    where = "per-process batch" if multi else "global batch"
    raise ValueError(
      f"{where} size {size} is not divisible by the device count "
      f"{num_devices}; choose a batch size that is a multiple of "
      f"{num_devices}."
    )
  if multi:
    out = [
      jax.make_array_from_process_local_data(sharding, np.asarray(leaf))
      for leaf in leaves
    ]
  else:
    out = [jax.device_put(leaf, sharding) for leaf in leaves]
  return jax.tree_util.tree_unflatten(treedef, out)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a full copy of every leaf on every device of the mesh.

  In a multi-process run every process must pass the same values (e.g.
  parameters initialised from the same key).

  Args:
    tree: a pytree of arrays or scalars (parameters, optimizer state, a
      flax `TrainState`).
    mesh: a one-axis mesh from `make_mesh`.

  Returns:
    The same pytree of `jax.Array`s with `replicated_sharding(mesh)`.
  """
  sharding = replicated_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return jax.device_put(leaf, sharding)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

  return jax.tree_util.tree_map(put, tree)


def _parse_address(address: Any) -> tuple[str, int]:
  if not isinstance(address, str) or ":" not in address:
    raise ValueError(
      f"coordinator_address must be a 'host:port' string, got {address!r}."
    )
  host, port_text = address.rsplit(":", 1)
  host = host.strip("[]")  # "[::1]:1234" -> "::1".
  if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
    raise ValueError(
      "coordinator_address must be 'host:port' with a port in 1..65535, "
      f"got {address!r}."
    )
  return host, int(port_text)


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
  """Polls a TCP connect until it succeeds or `timeout_s` passes."""
  deadline = time.monotonic() + timeout_s
  last_error: OSError | None = None
  while True:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      break
    try:
      with socket.create_connection((host, port), timeout=min(remaining, 2.0)):
        return
    except OSError as error:  # Refused, unreachable, or timed out.
      last_error = error
      time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))
  raise TimeoutError(
    f"could not reach the jax.distributed coordinator at {host}:{port} "
    f"within {timeout_s:g} s (last error: {last_error}). Check that process "
    "0 is running with the same --coordinator_address, that the address is "
    "reachable from this host, and that the port is open."
  )


def _check_port_free(port: int) -> None:
  """Process 0's coordinator binds `[::]:port`; fail early if it is taken."""
  try:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      sock.bind(("", port))
  except OSError as error:
    raise ValueError(
      f"process 0 hosts the coordinator on port {port}, but that port "
      f"cannot be bound on this host ({error}); choose a free port in "
      "coordinator_address."
    ) from error


def _check_timeout(timeout_s: Any) -> None:
  if (
    isinstance(timeout_s, bool)
    or not isinstance(timeout_s, int | float)
    or not math.isfinite(timeout_s)
    or timeout_s <= 0
  ):
    raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}.")


def initialize_distributed(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  *,
  timeout_s: float = 30,
) -> None:
  """Validates the arguments, then starts `jax.distributed`.

  Must run before any other JAX call in the process (jax's rule: the
  backend must not have started). Process 0 hosts the coordinator service
  at `coordinator_address`; every process then registers with it. With all
  three of `coordinator_address`, `num_processes` and `process_id` None,
  jax detects them from the cluster environment (Cloud TPU pod slices,
  Slurm, Open MPI).

  Failure is bounded by `timeout_s`: a process other than 0 first polls the
  coordinator's port and raises `TimeoutError` with a clear message if it
  cannot reach it in time. Past that point jax's runtime owns the wait: if
  not all `num_processes` processes register within `timeout_s`, XLA
  terminates the process (it aborts rather than raising) with
  "DEADLINE_EXCEEDED ... RegisterTask".

  Args:
    coordinator_address: "host:port" of process 0, e.g. "10.0.0.1:1234" or
      "127.0.0.1:12355" for processes on one machine; None to auto-detect.
    num_processes: total number of processes, >= 1; None to auto-detect.
    process_id: this process's index in `[0, num_processes)`; None to
      auto-detect.
    timeout_s: seconds to wait for the coordinator and the other processes.

  Raises:
    ValueError: if an argument is malformed, `process_id` is out of range,
      only some of the three are None, or (process 0) the port is taken.
    TimeoutError: if the coordinator cannot be reached within `timeout_s`.
    RuntimeError: (from jax) if JAX's backend already started or
      `jax.distributed` was already initialized.
  """
  _check_timeout(timeout_s)
  given = (coordinator_address, num_processes, process_id)
  if all(value is None for value in given):
    _initialize_detected(timeout_s)
    return
  if any(value is None for value in given):
    raise ValueError(
      "coordinator_address, num_processes and process_id must be all set or "
      f"all None (auto-detect), got {coordinator_address!r}, "
      f"{num_processes!r}, {process_id!r}."
    )
  host, port = _parse_address(coordinator_address)
  if not is_int(num_processes) or num_processes < 1:
    raise ValueError(
      f"num_processes must be an int >= 1, got {num_processes!r}."
    )
  if not is_int(process_id) or not 0 <= process_id < num_processes:
    raise ValueError(
      f"process_id must be an int in [0, {num_processes}) for "
      f"num_processes={num_processes}, got {process_id!r}."
    )
  if process_id == 0:
    _check_port_free(port)
  else:
    _wait_for_coordinator(host, port, timeout_s)
  logging.info(
    "jax.distributed: process %d of %d joining %s (timeout %g s).",
    process_id,
    num_processes,
    coordinator_address,
    timeout_s,
  )
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=int(num_processes),
    process_id=int(process_id),
    # Skip auto-detection of Slurm/MPI/TPU environments: we were told.
    cluster_detection_method="deactivate",
    initialization_timeout=max(1, math.ceil(timeout_s)),
  )


def _initialize_detected(timeout_s: float) -> None:
  """`jax.distributed.initialize` from the cluster's environment."""
  logging.info(
    "jax.distributed: detecting the cluster (timeout %g s).", timeout_s
  )
  try:
    jax.distributed.initialize(
      initialization_timeout=max(1, math.ceil(timeout_s))
    )
  except ValueError as error:  # jax: "... should be defined."
    raise ValueError(
      "auto-detecting jax.distributed found no cluster environment (Cloud "
      "TPU pod slice, Slurm, Open MPI) to take the coordinator address, "
      "process count and process id from; pass all three explicitly. "
      f"jax said: {error}"
    ) from error


def process_slice(
  num_examples: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> slice:
  """This process's contiguous share of `num_examples` examples.

  Every process gets `num_examples // process_count` examples; the at most
  `process_count - 1` left over are dropped so that all processes run the
  same number of steps (unequal step counts would hang the collectives).

  Args:
    num_examples: size of the data set, >= process_count.
    process_index: defaults to `jax.process_index()`.
    process_count: defaults to `jax.process_count()`.

  Returns:
    `slice(i * k, (i + 1) * k)` with `k = num_examples // process_count`.

  Raises:
    ValueError: if a count is not a positive int, `process_index` is out of
      range, or there are fewer examples than processes.
  """
  if process_count is None:
    process_count = jax.process_count()
  if process_index is None:
    process_index = jax.process_index()
  if not is_int(process_count) or process_count < 1:
    raise ValueError(
      f"process_count must be an int >= 1, got {process_count!r}."
    )
  if not is_int(process_index) or not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index must be an int in [0, {process_count}), got "
      f"{process_index!r}."
    )
  if not is_int(num_examples) or num_examples < process_count:
    raise ValueError(
      f"num_examples must be an int >= process_count ({process_count}), "
      f"got {num_examples!r}."
    )
  per_process = int(num_examples) // int(process_count)
  start = int(process_index) * per_process
  return slice(start, start + per_process)


def is_primary() -> bool:
  """True in process 0, the one that writes metrics and checkpoints."""
  return jax.process_index() == 0


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The rows of a global batch this process feeds to `shard_batch`.

  Args:
    global_batch_size: the batch size summed over all processes.
    mesh: a one-axis mesh from `make_mesh`.

  Returns:
    `global_batch_size // jax.process_count()`.

  Raises:
    ValueError: if `global_batch_size` is not divisible by the number of
      devices in the mesh.
  """
  devices = mesh.devices.size
  if not is_int(global_batch_size) or global_batch_size % devices:
    raise ValueError(
      f"global batch size {global_batch_size!r} is not divisible by the "
      f"device count {devices}."
    )
  return int(global_batch_size) // jax.process_count()


__all__: Sequence[str] = (
  "DATA_AXIS",
  "data_sharding",
  "initialize_distributed",
  "is_primary",
  "local_batch_size",
  "make_mesh",
  "process_slice",
  "replicate",
  "replicated_sharding",
  "shard_batch",
)
