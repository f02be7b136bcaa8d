"""Pictures (mud_iknn.visualize): what the previews and overlays accept and what they draw."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from mud_iknn import visualize


@pytest.mark.parametrize("image", [torch.rand(3, 4, 5), torch.full((3, 4, 5), 300, dtype=torch.int32)],
                         ids=["float in [0, 1]", "int32 above 255"])
def test_images_that_are_not_uint8_are_refused(tmp_path, image):
    """A float image in [0, 1] would be cast to black, 300 wrapped to 44: refused, naming the dtype."""
    values = np.zeros((4, 5))
    with pytest.raises(ValueError, match=f"image must be uint8.*got {str(image.dtype).removeprefix('torch.')}"):
        visualize.save_label_preview(image, values, tmp_path / "p.png")
    with pytest.raises(ValueError, match="image must be uint8"):
        visualize.save_overlay(image, values, 1.0, tmp_path / "o.png")
    with pytest.raises(ValueError, match="image must be uint8"):
        visualize.save_demo_figure(image, values, values, np.zeros((0, 2)), np.zeros((0, 2)), 1.0, tmp_path / "d.png")
    assert not list(tmp_path.iterdir())


def test_label_preview_is_the_image_beside_its_map(tmp_path):
    image = torch.full((3, 10, 12), 90, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"map \(5, 6\) and image \(10, 12\) differ in size"):
        visualize.save_label_preview(image, np.zeros((5, 6)), tmp_path / "p.png")
    values = np.zeros((10, 12))
    values[3, 7] = 2.0
    with Image.open(visualize.save_label_preview(image, values, tmp_path / "p.png")) as png:
        picture = np.asarray(png.convert("RGB"))
    assert picture.shape == (10, 24, 3) and (picture[:, :12] == 90).all()
    top, bottom = (np.round(np.array(colormaps["viridis"](v)[:3]) * 255) for v in (1.0, 0.0))
    assert (np.abs(picture[3, 12 + 7].astype(int) - top) <= 1).all()  # the map's max: the colour scale's top
    assert (np.abs(picture[0, 12].astype(int) - bottom) <= 1).all()


@pytest.mark.parametrize("points", [np.zeros((2, 3)), np.zeros((1, 3)), np.zeros(4)], ids=["2x3", "1x3", "flat"])
def test_points_that_are_not_n_by_2_are_refused(tmp_path, points):
    """(2, 3) used to be drawn as three heads (reshaped to (3, 2)), (1, 3) to fail in numpy's reshape."""
    image, values = torch.zeros(3, 8, 8, dtype=torch.uint8), np.zeros((8, 8))
    with pytest.raises(ValueError, match=r"points must have shape \(N, 2\)"):
        visualize.save_overlay(image, values, 1.0, tmp_path / "o.png", points=points)
    with pytest.raises(ValueError, match=r"true_points must have shape \(N, 2\)"):
        visualize.save_demo_figure(image, values, values, points, np.zeros((0, 2)), 1.0, tmp_path / "d.png")
    with pytest.raises(ValueError, match=r"located must have shape \(N, 2\)"):
        visualize.save_demo_figure(image, values, values, np.zeros((0, 2)), points, 1.0, tmp_path / "d.png")
    visualize.save_overlay(image, values, 1.0, tmp_path / "o.png", points=np.zeros((0,)))  # no head: fine
    visualize.save_overlay(image, values, 1.0, tmp_path / "o.png", points=torch.tensor([[2.0, 3.0]]))
