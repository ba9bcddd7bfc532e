"""One-file checkpoints of a pytree, for loops that keep their own carry.

The supervised loop checkpoints through orbax (`checkpoint.Checkpointer`).
Loops that run whole chunks under one `lax.scan` (DQN, the character
language model) carry a single pytree and a little progress: they save it
as one `.npz` file, written to a temporary name and renamed, so a kill
at any moment leaves either the previous file or the new one. The
settings that shaped the run are saved with it, and a resume with other
settings is refused rather than silently mixed.
"""

import json
import logging
import os
import pathlib
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivlab.training import checkpoint

_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def save_tree(
  path: pathlib.Path,
  tree: Any,
  meta: dict[str, Any],
  extra: dict[str, Any] | None = None,
) -> None:
  """Writes `tree`'s leaves, `meta` and `extra` arrays to `path` atomically.

  Args:
    path: the .npz file.
    tree: a pytree of arrays (its structure is not saved: `load_tree` takes
      a template).
    meta: JSON-serialisable; by convention `meta["settings"]` holds the
      settings a resume must match.
    extra: more arrays (e.g. metrics so far) under names with a "/" (a
      namespace, as "metric/loss", apart from the leaves), read back by name.

  Raises:
    ValueError: if an `extra` name has no "/".
    checkpoint.CheckpointWriteError: naming `path`, if it cannot be written.
  """
  plain = [k for k in extra or {} if "/" not in k]
  if plain:
    raise ValueError(f'extra names need a "/" namespace, got {plain}.')
  arrays = {
    f"leaf{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(tree))
  }
  arrays.update({k: np.asarray(v) for k, v in (extra or {}).items()})
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with checkpoint.write_errors(f"the checkpoint {path}"):
    try:
      with open(tmp, "wb") as f:
        np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)
      os.replace(tmp, path)
    finally:
      tmp.unlink(missing_ok=True)


def load_tree(
  path: pathlib.Path, template: Any, settings: dict[str, Any]
) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]] | None:
  """The tree, meta and extra arrays saved at `path`; None if there is none.

  The leaves are placed like `template`'s (same devices and sharding). A
  file that cannot be read, or holds leaves of other shapes or dtypes, is
  reported in one log line and None is returned: the run starts over.

  Args:
    path: the .npz file.
    template: a pytree with the structure, shapes and dtypes to restore.
    settings: what `meta["settings"]` must equal.

  Raises:
    ValueError: naming every differing setting, if the file was saved with
      other settings.
  """
  if not path.exists():
    return None
  leaves_like = jax.tree.leaves(template)
  try:
    with np.load(path) as saved:
      meta = json.loads(str(saved["meta"]))
      leaves = [saved[f"leaf{i}"] for i in range(len(leaves_like))]
      extra = {k: saved[k] for k in saved.files if "/" in k}
  except _UNREADABLE as error:
    logging.warning(
      "checkpoint %s is unreadable (%s); starting over.", path, error
    )
    return None
  check_settings(path, meta.get("settings", {}), settings)
  expected = [(tuple(t.shape), np.dtype(t.dtype)) for t in leaves_like]
  if [(a.shape, a.dtype) for a in leaves] != expected:
    logging.warning("checkpoint %s holds other shapes; starting over.", path)
    return None
  placed = [
    jax.device_put(a, t.sharding)
    if isinstance(t, jax.Array)
    else jnp.asarray(a)
    for a, t in zip(leaves, leaves_like, strict=True)
  ]
  return jax.tree.unflatten(jax.tree.structure(template), placed), meta, extra


def setting_changes(saved: dict, current: dict) -> str:
  """ "k: saved a vs now b" for every differing setting, or "" if none."""
  differ = sorted(
    k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k)
  )
  return ", ".join(
    f"{k}: saved {saved.get(k)!r} vs now {current.get(k)!r}" for k in differ
  )


def check_settings(path: Any, saved: dict, current: dict) -> None:
  """Raises a ValueError naming every setting where `saved` != `current`."""
  changes = setting_changes(saved, current)
  if changes:
    raise ValueError(
      f"{path} is a checkpoint of other settings ({changes}): use another "
      f"--workdir, or remove it to start over."
    )
