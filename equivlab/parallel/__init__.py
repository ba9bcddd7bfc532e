"""Parallelism: devices and hosts through JAX's sharding runtime.

`devices` holds the mesh, the data and replicated shardings, batch
sharding across hosts and `jax.distributed` start-up; its public names are
available here (`parallel.make_mesh(...)`).
"""

from equivlab.parallel.devices import (
  DATA_AXIS,
  data_sharding,
  initialize_distributed,
  is_primary,
  local_batch_size,
  make_mesh,
  process_slice,
  replicate,
  replicated_sharding,
  shard_batch,
)

__all__ = [
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
]
