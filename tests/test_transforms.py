"""Augmentation moves image and head points together; collation packs points."""
import pytest
import torch

from mud_iknn.sample import CrowdSample
from mud_iknn.transforms import TrainTransform, collate_crowd, count_inside, crop, hflip, rescale


def _marked(height, width, heads):
    """An image that is 255 in channel 0 exactly at the integer head pixels, 0 elsewhere."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    points = torch.tensor(heads, dtype=torch.float32).reshape(-1, 2)
    for x, y in heads:
        if 0 <= x < width and 0 <= y < height:
            image[0, int(y), int(x)] = 255
    return CrowdSample(image=image, points=points, name="m", count=count_inside(points, height, width))


def _heads_on_marks(sample):
    _, h, w = sample.image.shape
    for x, y in sample.points.tolist():
        if 0 <= x < w and 0 <= y < h:
            assert sample.image[0, int(round(y)), int(round(x))] == 255, (x, y)
    return True


def test_crop_shifts_points_keeps_outside_heads_and_counts_inside():
    s = _marked(20, 30, [(2, 3), (10, 12), (25, 5), (29, 19)])
    c = crop(s, top=4, left=8, height=10, width=10)
    assert c.image.shape == (3, 10, 10)
    assert torch.equal(c.image, s.image[:, 4:14, 8:18])
    assert c.points.tolist() == [[-6, -1], [2, 8], [17, 1], [21, 15]]
    assert c.count == 1
    assert _heads_on_marks(c)


def test_crop_zero_pads_a_small_image():
    s = _marked(5, 6, [(1, 1), (5, 4)])
    c = crop(s, 0, 0, 8, 8)
    assert c.image.shape == (3, 8, 8)
    assert c.image[:, 5:].sum() == 0 and c.image[:, :, 6:].sum() == 0
    assert torch.equal(c.image[:, :5, :6], s.image)
    assert c.count == 2


def test_crop_does_not_count_heads_in_the_padding():
    s = CrowdSample(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.tensor([[1.0, 1.0], [6.0, 1.0]]), count=1)
    assert crop(s, 0, 0, 8, 8).count == 1


def test_hflip_maps_x_to_w_minus_1_minus_x():
    s = _marked(4, 7, [(0, 0), (2, 3), (6.0, 1)])
    f = hflip(s)
    assert f.points.tolist() == [[6, 0], [4, 3], [0, 1]]
    assert torch.equal(f.image, s.image.flip(-1))
    assert _heads_on_marks(f) and f.count == 3
    assert torch.equal(hflip(f).points, s.points)


def test_hflip_keeps_the_count_the_pixels_cover():
    # width 4: pixel j covers [j - 0.5, j + 0.5), so the image spans [-0.5, 3.5): the mirror maps it
    # onto itself. -0.3 (pixel 0) -> 3.3 (pixel 3), 3.25 -> -0.25, 1.0 -> 2.0 stay in; -0.75 and 3.6
    # stay out; the sample's count holds one head more than its points say, and keeps it
    s = CrowdSample(torch.zeros(3, 2, 4, dtype=torch.uint8), torch.tensor([[-0.3, 0.0], [3.25, 1.0], [1.0, 1.0],
                                                                             [-0.75, 0.5], [3.6, 0.0]]), count=4)
    f = hflip(s)
    assert f.points[:, 0].tolist() == pytest.approx([3.3, -0.25, 2.0, 3.75, -0.6])
    assert count_inside(s.points, 2, 4) == count_inside(f.points, 2, 4) == 3 and f.count == s.count == 4
    # a head exactly on the outer edge (x = -0.5, in pixel 0) leaves at 3.5 (pixel 4), and comes back
    edge = CrowdSample(torch.zeros(3, 2, 4, dtype=torch.uint8), torch.tensor([[-0.5, 0.0]]), count=1)
    assert hflip(edge).count == 0 and hflip(hflip(edge)).count == 1


def test_rescale_keeps_heads_on_their_content():
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, 2:4, 4:6] = 255  # a 2x2 block centred at (x, y) = (4.5, 2.5)
    s = CrowdSample(image, torch.tensor([[4.5, 2.5], [-3.0, 1.0]]), count=1)
    r = rescale(s, 2.0)
    assert r.image.shape == (3, 16, 16)
    assert r.points[0].tolist() == [9.5, 5.5]  # centre of the scaled block, rows 4..7, cols 8..11
    assert (r.image[0, 5:7, 9:11] == 255).all() and r.image[0, 0, 0] == 0
    assert r.points.shape[0] == 2 and r.count == 1  # the outside head is kept, not counted


def test_train_transform_moves_heads_with_pixels():
    heads = [(x, y) for x, y in zip(range(3, 90, 7), range(5, 60, 4))]
    s = _marked(60, 90, heads)
    for seed in range(12):
        out = TrainTransform(patch_size=32)(s, torch.Generator().manual_seed(seed))
        assert out.image.shape == (3, 32, 32)
        assert out.points.shape[0] == len(heads)
        assert _heads_on_marks(out)
        assert out.count == float((out.image[0] == 255).sum())
    first = TrainTransform(patch_size=32)(s, torch.Generator().manual_seed(3))
    again = TrainTransform(patch_size=32)(s, torch.Generator().manual_seed(3))
    assert torch.equal(first.image, again.image) and torch.equal(first.points, again.points)


def test_train_transform_flip_probability_and_scale():
    s = _marked(16, 16, [(3, 5)])
    never = TrainTransform(patch_size=16, flip_p=0.0)(s, torch.Generator().manual_seed(0))
    always = TrainTransform(patch_size=16, flip_p=1.0)(s, torch.Generator().manual_seed(0))
    assert never.points.tolist() == [[3, 5]] and always.points.tolist() == [[12, 5]]
    scaled = TrainTransform(patch_size=16, flip_p=0.0, scale_range=(2.0, 2.0))(s, torch.Generator().manual_seed(0))
    assert scaled.image.shape == (3, 16, 16) and scaled.points.shape == (1, 2)
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform(scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="flip_p"):
        TrainTransform(flip_p=1.5)


def test_collate_packs_points_in_order():
    a = _marked(8, 8, [(1, 1), (2, 2), (9, 9)])
    b = _marked(8, 8, [])
    c = _marked(8, 8, [(7, 0)])
    batch = collate_crowd([a, b, c])
    assert batch.images.shape == (3, 3, 8, 8) and batch.images.dtype == torch.uint8
    assert batch.offsets.tolist() == [0, 3, 3, 4]
    assert batch.points.tolist() == [[1, 1], [2, 2], [9, 9], [7, 0]]
    assert batch.counts.tolist() == [2.0, 0.0, 1.0] and batch.counts.dtype == torch.float32
    moved = batch.to("cpu", non_blocking=True)
    assert torch.equal(moved.points, batch.points) and len(moved) == 3
    with pytest.raises(ValueError, match="one shape"):
        collate_crowd([a, _marked(9, 8, [])])


def test_labels_of_transformed_points_equal_transformed_labels():
    # crop and flip act on points exactly as on pixels: the ikNN map made after them is the same
    # crop/flip of the whole image's map (heads outside the patch included)
    import mud_iknn

    g = torch.Generator().manual_seed(0)
    points = torch.rand(25, 2, generator=g) * torch.tensor([70.0, 50.0])
    sample = CrowdSample(torch.zeros(3, 50, 70, dtype=torch.uint8), points)
    full = mud_iknn.iknn_maps(points, (50, 70), k=2)[0]
    for top, left in [(0, 0), (26, 46), (7, 31)]:
        patch = crop(sample, top, left, 24, 24)
        window = full[top:top + 24, left:left + 24]
        torch.testing.assert_close(mud_iknn.iknn_maps(patch.points, (24, 24), k=2)[0], window)
        torch.testing.assert_close(mud_iknn.iknn_maps(hflip(patch).points, (24, 24), k=2)[0], window.flip(-1))
