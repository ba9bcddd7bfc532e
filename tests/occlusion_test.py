"""Tests of equivlab.occlusion (seed 002 problem 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import occlusion


def _corner_model(x):
  """Two classes: logit 0 is 4 x the ink in the 3x3 top-left corner."""
  ink = jnp.sum(x[:, :3, :3, 0], axis=(1, 2))
  return jnp.stack([4.0 * ink, jnp.full_like(ink, 2.0)], axis=-1)


def _image():
  image = np.zeros((6, 6, 1), np.float32)
  image[:3, :3] = 1.0  # 9 units of ink: logit 36 against 2.
  return image


def test_occlude_by_hand():
  image = jnp.zeros((5, 5, 1))
  out = occlusion.occlude(image, 2, 2, 3, 0.5)[..., 0]
  expected = np.zeros((5, 5))
  expected[1:4, 1:4] = 0.5
  np.testing.assert_array_equal(out, expected)
  # Clipped at the corner; an even size extends one more pixel up-left.
  out = occlusion.occlude(image, 0, 0, 4, 1.0)[..., 0]
  expected = np.zeros((5, 5))
  expected[:2, :2] = 1.0
  np.testing.assert_array_equal(out, expected)
  # Size 0 leaves the image alone.
  np.testing.assert_array_equal(occlusion.occlude(image + 1, 2, 2, 0), 1.0)


def test_occlude_vmaps_over_sizes_and_positions():
  image = jnp.zeros((4, 4, 1))
  sizes = jnp.array([1, 2, 3])
  out = jax.vmap(occlusion.occlude, in_axes=(None, 0, 0, 0, None))(
    image, jnp.array([0, 1, 3]), jnp.array([0, 1, 3]), sizes, 1.0
  )
  np.testing.assert_array_equal(jnp.sum(out, axis=(1, 2, 3)), [1, 4, 4])


def test_occlusion_maps_match_direct_evaluation():
  image = _image()
  maps = occlusion.occlusion_maps(
    _corner_model, image, 0, patch_size=3, value=0.0
  )
  assert maps["true_prob"].shape == (6, 6)
  # A black 3x3 patch centred at (1, 1) erases all the ink: logit 0 vs 2.
  p_erased = 1 / (1 + np.exp(2.0))
  np.testing.assert_allclose(maps["true_prob"][1, 1], p_erased, rtol=1e-5)
  assert maps["label"][1, 1] == 1
  np.testing.assert_allclose(maps["top_prob"][1, 1], 1 - p_erased, rtol=1e-5)
  # Far from the corner the image is untouched.
  np.testing.assert_allclose(maps["true_prob"][5, 5], 1.0, atol=1e-6)
  assert maps["label"][5, 5] == 0
  # Every entry equals an explicit occlude-and-classify.
  for i, j in [(0, 2), (3, 0)]:
    probs = jax.nn.softmax(
      _corner_model(occlusion.occlude(jnp.asarray(image), i, j, 3, 0.0)[None])
    )
    np.testing.assert_allclose(
      maps["true_prob"][i, j], probs[0, 0], rtol=1e-5, atol=1e-7
    )
  np.testing.assert_allclose(maps["clean_probs"][0], 1.0, atol=1e-6)


def test_occlusion_maps_stride_and_chunks():
  image = _image()
  full = occlusion.occlusion_maps(_corner_model, image, 0, patch_size=2)
  strided = occlusion.occlusion_maps(
    _corner_model, image, 0, patch_size=2, stride=2, batch_size=4
  )
  assert strided["label"].shape == (3, 3)
  np.testing.assert_allclose(
    strided["true_prob"], full["true_prob"][::2, ::2], rtol=1e-6
  )


def test_find_flipping_patch_finds_the_smallest():
  result = occlusion.find_flipping_patch(
    _corner_model, _image(), 0, sizes=(3, 1, 2), value=0.0
  )
  # Covering 1 pixel leaves logit 32 > 2; 2x2 leaves 5 ink: 20 > 2; a 3x3
  # patch centred at (1, 1) removes all 9.
  assert result["found"]
  assert (result["size"], result["row"], result["col"]) == (3, 1, 1)
  assert result["new_label"] == 1
  assert result["clean_label"] == 0
  assert result["flip_fraction"][1] == 0.0
  assert result["flip_fraction"][3] == pytest.approx(1 / 36)


def test_find_flipping_patch_reports_none():
  def constant(x):
    return jnp.tile(jnp.array([[3.0, 0.0]]), (x.shape[0], 1))

  result = occlusion.find_flipping_patch(constant, _image(), 0, sizes=(2, 6))
  assert not result["found"]
  assert result["flip_fraction"] == {2: 0.0, 6: 0.0}


def test_rejects_unbatched_shape():
  with pytest.raises(ValueError, match=r"one image \[H, W, C\]"):
    occlusion.occlusion_maps(_corner_model, np.zeros((1, 6, 6, 1)), 0)


@pytest.mark.parametrize("size", [0, 7])
def test_rejects_bad_patch_size(size):
  with pytest.raises(ValueError, match="patch size must be in 1..6"):
    occlusion.occlusion_maps(_corner_model, _image(), 0, patch_size=size)


def test_rejects_bad_stride():
  with pytest.raises(ValueError, match="stride must be >= 1"):
    occlusion.occlusion_maps(_corner_model, _image(), 0, patch_size=2, stride=0)


@pytest.mark.parametrize("label", [-1, 2])
def test_rejects_bad_label(label):
  with pytest.raises(ValueError, match="label must be"):
    occlusion.occlusion_maps(_corner_model, _image(), label, patch_size=2)


def test_rejects_no_sizes():
  with pytest.raises(ValueError, match="at least one patch size"):
    occlusion.find_flipping_patch(_corner_model, _image(), 0, sizes=())
