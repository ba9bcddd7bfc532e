"""Tests of equivlab.training.npz: one-file checkpoints of a pytree."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.training import checkpoint, npz

_TREE = {"w": jnp.arange(6.0).reshape(2, 3), "n": (jnp.int32(7), jnp.ones(2))}
_SETTINGS = {"lr": 0.1, "seed": 3}


def test_round_trip_of_tree_meta_and_extra_arrays(tmp_path):
  path = tmp_path / "c.npz"
  extra = {"metric/loss": np.array([[0.5, 0.25]])}
  npz.save_tree(path, _TREE, {"settings": _SETTINGS, "done": 4}, extra=extra)
  assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary
  template = jax.tree.map(jnp.zeros_like, _TREE)
  tree, meta, back = npz.load_tree(path, template, _SETTINGS)
  assert jax.tree.structure(tree) == jax.tree.structure(_TREE)
  jax.tree.map(np.testing.assert_array_equal, tree, _TREE)
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(tree))
  assert meta == {"settings": _SETTINGS, "done": 4}
  np.testing.assert_array_equal(back["metric/loss"], extra["metric/loss"])


def test_extra_names_need_a_namespace(tmp_path):
  with pytest.raises(
    ValueError, match=r"need a \"/\" namespace, got \['loss'\]"
  ):
    npz.save_tree(tmp_path / "c.npz", _TREE, {}, extra={"loss": np.zeros(2)})


def test_missing_file_is_none(tmp_path):
  assert npz.load_tree(tmp_path / "none.npz", _TREE, _SETTINGS) is None


def test_other_settings_are_refused_naming_each(tmp_path):
  path = tmp_path / "c.npz"
  npz.save_tree(path, _TREE, {"settings": _SETTINGS})
  with pytest.raises(ValueError, match=r"lr: saved 0.1 vs now 0.2.*seed"):
    npz.load_tree(path, _TREE, {"lr": 0.2, "seed": 4})


@pytest.mark.parametrize("damage", ["truncated", "other shapes"])
def test_unreadable_or_other_shapes_start_over_with_one_line(
  tmp_path, caplog, damage
):
  path = tmp_path / "c.npz"
  npz.save_tree(path, _TREE, {"settings": _SETTINGS})
  template = _TREE
  if damage == "truncated":
    path.write_bytes(path.read_bytes()[:50])
  else:
    template = {**_TREE, "w": jnp.zeros((3, 2))}
  with caplog.at_level(logging.WARNING):
    assert npz.load_tree(path, template, _SETTINGS) is None
  assert "starting over" in caplog.text and str(path) in caplog.text


def test_write_failure_names_the_path_and_leaves_nothing(tmp_path):
  path = tmp_path / "missing_dir" / "c.npz"
  with pytest.raises(checkpoint.CheckpointWriteError, match="missing_dir"):
    npz.save_tree(path, _TREE, {"settings": _SETTINGS})
  assert list(tmp_path.iterdir()) == []
