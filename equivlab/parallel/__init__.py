"""Parallelism: devices and hosts through JAX's sharding runtime, and
independent programs in threads.

- `devices`: the mesh, the data and replicated shardings, batch sharding
  across hosts and `jax.distributed` start-up.
- `threads`: `thread_map`, `group_bounds` and `map_groups`, the one runner
  of side-by-side programs (seed groups, sweeps).

Their public names are available here (`parallel.make_mesh(...)`).
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
from equivlab.parallel.threads import (
  default_groups,
  group_bounds,
  map_groups,
  thread_map,
)

__all__ = [
  "DATA_AXIS",
  "data_sharding",
  "default_groups",
  "group_bounds",
  "initialize_distributed",
  "is_primary",
  "local_batch_size",
  "make_mesh",
  "map_groups",
  "process_slice",
  "replicate",
  "replicated_sharding",
  "shard_batch",
  "thread_map",
]
