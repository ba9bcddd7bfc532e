"""Tests of equivlab.analysis.viz: every picture is a real PNG; bad input
is named."""

import numpy as np
import pytest

from equivlab.analysis import tables, viz

_PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == _PNG


def test_plot_filters_single_and_many_inputs(tmp_path):
  rng = np.random.default_rng(0)
  one = viz.plot_filters(rng.normal(size=(3, 3, 1, 6)), tmp_path / "a.png")
  many = viz.plot_filters(
    rng.normal(size=(3, 3, 4, 5)), tmp_path / "sub" / "b.png", max_in=2
  )
  assert _is_png(one) and _is_png(many)
  assert one == str(tmp_path / "a.png")


def test_grids_are_one_image_each_panel_on_its_own_scale():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(3, 3)), 5.0 + 100.0 * rng.normal(size=(3, 3))
  for panel in (a, b):
    scaled = viz._scaled(panel)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose(
      scaled, (panel - panel.min()) / np.ptp(panel), rtol=1e-6
    )
  assert (viz._scaled(np.full((2, 2), 7.0)) == 0.5).all()
  # Panels (1, 0) and (0, 1) of a 2x2 grid, gap 1 (columns) and 2 (rows);
  # the 1x1 panel is resampled to 3x3. Everything else stays white.
  big = np.stack([viz._scaled(a)] * 3 + [np.ones((3, 3))], -1)
  small = np.array([[[0.25, 0.5, 0.75, 1.0]]])
  image, h, w, gap_y = viz._mosaic(
    [(1, 0, big), (0, 1, small)], 2, 2, gap=1, gap_y=2
  )
  assert (h, w, gap_y) == (3, 3, 2) and image.shape == (10, 7, 4)
  np.testing.assert_array_equal(image[7:10, 0:3], big)
  np.testing.assert_array_equal(
    image[2:5, 4:7], np.broadcast_to(small, big.shape)
  )
  white = np.ones_like(image, bool)
  white[7:10, 0:3] = white[2:5, 4:7] = False
  assert (image[white] == 1.0).all()


def test_plot_feature_maps(tmp_path):
  maps = np.random.default_rng(0).uniform(size=(7, 7, 5))
  path = viz.plot_feature_maps(
    maps, tmp_path / "f.png", image=np.zeros((14, 14, 1)), max_maps=4
  )
  assert _is_png(path)


def test_plot_images_and_occlusion(tmp_path):
  images = np.random.default_rng(0).uniform(size=(3, 8, 8, 1))
  assert _is_png(
    viz.plot_images(images, tmp_path / "i.png", titles=["a", "b", "c"])
  )
  maps = {
    "true_prob": np.linspace(0, 1, 64).reshape(8, 8),
    "top_prob": np.ones((8, 8)),
    "label": np.arange(64).reshape(8, 8) % 10,
  }
  assert _is_png(
    viz.plot_occlusion(
      images[0], maps, tmp_path / "o.png", label=6, patch_size=3
    )
  )


def test_plot_curves_and_bars(tmp_path):
  curves = {"a": [1.0, 0.5, 0.25], "b": [2.0, 1.0]}
  assert _is_png(viz.plot_learning_curves(curves, tmp_path / "c.png"))
  assert _is_png(
    viz.plot_learning_curves(
      curves, tmp_path / "d.png", x=[0, 2, 4], log_y=True
    )
  )
  assert _is_png(
    viz.plot_bars(
      ["x", "y"],
      {"s": [1.0, 2.0], "t": [0.5, 0.7]},
      tmp_path / "b.png",
      errors={"s": [0.1, 0.2]},
    )
  )


def test_format_table_by_hand():
  rows = [
    {"model": "mlp", "acc": 0.94881, "n": 12},
    {"model": "p4cnn", "acc": 1.0, "n": 3},
  ]
  assert tables.format_table(rows) == (
    "| model | acc    | n  |\n"
    "|-------|--------|----|\n"
    "| mlp   | 0.9488 | 12 |\n"
    "| p4cnn | 1.0000 | 3  |"
  )
  assert tables.format_table(rows, ["n"]).splitlines()[2] == "| 12 |"


def test_bad_filters_rank(tmp_path):
  with pytest.raises(ValueError, match=r"kernel must be \[kh, kw, C_in"):
    viz.plot_filters(np.zeros((3, 3, 4)), tmp_path / "x.png")


def test_bad_feature_maps_rank(tmp_path):
  with pytest.raises(ValueError, match=r"maps must be \[H, W, C\]"):
    viz.plot_feature_maps(np.zeros((1, 3, 3, 4)), tmp_path / "x.png")


def test_bad_images(tmp_path):
  with pytest.raises(ValueError, match="images must be"):
    viz.plot_images(np.zeros((3, 3)), tmp_path / "x.png")
  with pytest.raises(ValueError, match="one title per image"):
    viz.plot_images(np.zeros((2, 3, 3)), tmp_path / "x.png", titles=["a"])


def test_occlusion_maps_missing(tmp_path):
  with pytest.raises(ValueError, match="maps lacks"):
    viz.plot_occlusion(np.zeros((4, 4)), {"label": 0}, tmp_path / "x.png")


def test_empty_curves_and_short_x(tmp_path):
  with pytest.raises(ValueError, match="at least one series"):
    viz.plot_learning_curves({}, tmp_path / "x.png")
  with pytest.raises(ValueError, match="need one x each"):
    viz.plot_learning_curves({"a": [1, 2, 3]}, tmp_path / "x.png", x=[0])


def test_bars_lengths(tmp_path):
  with pytest.raises(ValueError, match="one value per name"):
    viz.plot_bars(["a", "b"], {"s": [1.0]}, tmp_path / "x.png")
  with pytest.raises(ValueError, match="at least one series"):
    viz.plot_bars(["a"], {}, tmp_path / "x.png")


def test_table_errors():
  with pytest.raises(ValueError, match="at least one row"):
    tables.format_table([])
  with pytest.raises(ValueError, match="row 1 lacks columns"):
    tables.format_table([{"a": 1}, {"b": 2}])
