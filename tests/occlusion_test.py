"""Tests of equivlab.analysis.occlusion (Zeiler & Fergus 2014)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.analysis import occlusion


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
  assert result["labels"] == {1: [], 2: [], 3: [1]}


def test_find_flipping_patch_reports_none():
  def constant(x):
    return jnp.tile(jnp.array([[3.0, 0.0]]), (x.shape[0], 1))

  result = occlusion.find_flipping_patch(constant, _image(), 0, sizes=(2, 6))
  assert not result["found"]
  assert result["flip_fraction"] == {2: 0.0, 6: 0.0}


def test_ragged_last_batch_compiles_once_and_changes_nothing():
  traces = []

  def model(x):
    traces.append(x.shape)
    return _corner_model(x)

  apply_fn = jax.jit(model)
  image = _image()
  # 36 occluded images and the clean one in batches of 10: 10, 10, 10, 7.
  ragged = occlusion.occlusion_maps(
    apply_fn, image, 0, patch_size=2, batch_size=10
  )
  assert apply_fn._cache_size() == 1
  assert traces == [(10, 6, 6, 1)]
  whole = occlusion.occlusion_maps(
    _corner_model, image, 0, patch_size=2, batch_size=1024
  )
  for key in ("true_prob", "top_prob", "label", "clean_probs"):
    np.testing.assert_allclose(ragged[key], whole[key], rtol=1e-6)
  # Several sizes, the same batch shape: still one compilation.
  occlusion.find_flipping_patch(
    apply_fn, image, 0, sizes=(1, 2, 3), batch_size=10
  )
  assert apply_fn._cache_size() == 1 and len(traces) == 1


def test_integer_images_promote_like_jnp():
  image = _image()
  as_int = occlusion.occlusion_maps(
    _corner_model, image.astype(np.uint8), 0, patch_size=3, value=0.0
  )
  as_float = occlusion.occlusion_maps(
    _corner_model, image, 0, patch_size=3, value=0.0
  )
  np.testing.assert_allclose(as_int["true_prob"], as_float["true_prob"])


def _two_classes_for_a_batch_of_one(x):
  return jnp.zeros((2,))


def _nan_model(x):
  return jnp.full((x.shape[0], 2), jnp.nan)


@pytest.mark.parametrize(
  ("kwargs", "error", "message"),
  [
    ({"image": np.zeros((1, 6, 6, 1))}, ValueError, r"one image \[H, W, C\]"),
    ({"image": np.zeros((6, 0, 1))}, ValueError, "image must not be empty"),
    ({"image": np.full((6, 6, 1), "a")}, TypeError, "real-valued array"),
    ({"patch_size": 0}, ValueError, r"patch_size must be an int in \[1, 6\]"),
    ({"patch_size": 7}, ValueError, r"patch_size must be an int in \[1, 6\]"),
    ({"patch_size": 2.0}, TypeError, "patch_size must be an int"),
    ({"stride": 0}, ValueError, "stride must be an int >= 1, got 0"),
    ({"label": -1}, ValueError, "label must be an int >= 0, got -1"),
    ({"label": 2}, ValueError, r"label must be an int in \[0, 1\], got 2"),
    ({"label": True}, TypeError, "label must be an int"),
    ({"value": float("nan")}, ValueError, "value must be a finite number"),
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
    ({"apply_fn": "cnn"}, TypeError, "apply_fn must be a function"),
    (
      {"apply_fn": _two_classes_for_a_batch_of_one},
      ValueError,
      r"apply_fn must map images \[37, H, W, C\] to logits \[37, K\], got "
      r"shape \(2,\)",
    ),
    ({"apply_fn": _nan_model}, ValueError, "non-finite logits"),
  ],
)
def test_bad_inputs_are_clear_errors(kwargs, error, message):
  arguments = {
    "apply_fn": _corner_model,
    "image": _image(),
    "label": 0,
    "patch_size": 2,
  }
  arguments.update(kwargs)
  apply_fn, image, label = (
    arguments.pop(k) for k in ("apply_fn", "image", "label")
  )
  with pytest.raises(error, match=message):
    occlusion.occlusion_maps(apply_fn, image, label, **arguments)


@pytest.mark.parametrize(
  ("sizes", "error", "message"),
  [
    ((), ValueError, "sizes must hold at least one int"),
    ((2, 0), ValueError, r"sizes\[1\] must be an int >= 1, got 0"),
    ((2, 9), ValueError, r"patch_size must be an int in \[1, 6\], got 9"),
    ("3", TypeError, "sizes must be a sequence of ints"),
  ],
)
def test_bad_sizes_are_refused_before_any_search(sizes, error, message):
  calls = []

  def counting(x):
    calls.append(1)
    return _corner_model(x)

  with pytest.raises(error, match=message):
    occlusion.find_flipping_patch(counting, _image(), 0, sizes=sizes)
  assert not calls


@pytest.mark.parametrize(
  ("args", "error", "message"),
  [
    ((6, 0, 1), ValueError, r"row must be in \[0, 5\] \(6 rows\), got 6"),
    ((0, -1, 1), ValueError, r"col must be in \[0, 5\]"),
    ((0, 0, -1), ValueError, r"size must be in \[0, 6\] for a 6x6"),
    ((0, 0, 7), ValueError, r"size must be in \[0, 6\]"),
    ((0.5, 0, 1), TypeError, "row must be an integer scalar"),
    ((0, 0, jnp.array([1, 2])), TypeError, "size must be an integer scalar"),
  ],
)
def test_occlude_refuses_positions_and_sizes_outside_the_image(
  args, error, message
):
  with pytest.raises(error, match=message):
    occlusion.occlude(_image(), *args)


def test_occlude_takes_concrete_jax_scalars():
  out = occlusion.occlude(_image(), jnp.int32(0), np.int64(0), jnp.array(1))
  assert float(out[0, 0, 0]) == 0.5


def test_out_of_range_label_is_refused_before_any_search():
  calls = []  # Only concrete evaluations: tracing for the shape is free.

  def counting(x):
    if not isinstance(x, jax.core.Tracer):
      calls.append(1)
    return _corner_model(x)

  with pytest.raises(ValueError, match=r"label must be an int in \[0, 1\]"):
    occlusion.occlusion_maps(counting, _image(), 2, patch_size=2)
  with pytest.raises(ValueError, match=r"label must be an int in \[0, 1\]"):
    occlusion.find_flipping_patch(counting, _image(), 5, sizes=(2,))
  assert not calls


@pytest.mark.parametrize(
  ("images", "batch_size", "message"),
  [
    (np.zeros((2, 6, 6, 1), np.float32), 0, "batch_size must be an int >= 1"),
    (np.zeros((6, 6, 1), np.float32), 2, r"images \[P, H, W, C\]"),
    (np.zeros((0, 6, 6, 1), np.float32), 2, "at least one image"),
  ],
)
def test_probabilities_bad_input(images, batch_size, message):
  with pytest.raises(ValueError, match=message):
    occlusion.probabilities(_corner_model, images, batch_size)
