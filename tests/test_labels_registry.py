"""The registry of label kinds (mud_iknn.label_kinds): parameters, validation, make, serialisation,
and checkpoints of the flat form written before it."""
import numpy as np
import pytest
import torch

from mud_iknn import label_kinds, reference
from mud_iknn.label_kinds import KINDS, CountLabel, DensityLabel, FidtLabel, IknnLabel


def _packed(rng, sizes, extent):
    pts = [rng.uniform(-4, extent + 4, size=(n, 2)).astype(np.float32) for n in sizes]
    points = torch.from_numpy(np.concatenate(pts))
    offsets = torch.tensor(np.cumsum([0] + list(sizes)), dtype=torch.int64)
    return pts, points, offsets


def test_every_kind_makes_its_engine_map():
    rng = np.random.default_rng(0)
    pts, points, offsets = _packed(rng, [5, 0, 9], 24)
    expected = {
        IknnLabel(k=2, max_distance=10.0): reference.iknn_maps(pts, (24, 24), 2, max_distance=10.0),
        IknnLabel(transform="inverse_sqrt"): reference.iknn_maps(pts, (24, 24), 1, transform="inverse_sqrt"),
        DensityLabel(): reference.density_maps(pts, (24, 24), "adaptive", k=3, beta=0.3),
        DensityLabel(sigma=2.0, truncate=3.0): reference.density_maps(pts, (24, 24), 2.0, truncate=3.0),
        FidtLabel(): reference.fidt_maps(pts, (24, 24)),
        FidtLabel(alpha=0.0, beta=1.0, c=2.0, zero_below=0.05): reference.fidt_maps(pts, (24, 24), alpha=0.0, beta=1.0,
                                                                                   c=2.0, zero_below=0.05),
        CountLabel(): reference.count_maps(pts, (24, 24)),
    }
    for kind, want in expected.items():
        got = kind.make(points, (24, 24), offsets)
        assert got.shape == (3, 24, 24) and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5, err_msg=str(kind))
    assert (IknnLabel().make(points, (24, 24), offsets)[1] == 0).all()  # no heads: M = 0


def test_stride_maps_points_to_label_pixels():
    # stride 2: label pixel (i, j) covers input pixels [2i, 2i + 2) x [2j, 2j + 2), centre (2j + 0.5, 2i + 0.5)
    points = torch.tensor([[4.5, 6.5]])
    offsets = torch.tensor([0, 1])
    label = IknnLabel().make(points, (8, 8), offsets, stride=2)
    assert label[0, 3, 2].item() == pytest.approx(1.0)
    assert label[0, 3, 3].item() == pytest.approx(0.5)  # one label pixel away: 1 / (1 + 1)
    assert FidtLabel().make(points, (8, 8), offsets, stride=2)[0, 3, 3].item() == pytest.approx(0.5, abs=1e-6)
    assert IknnLabel().make([points], (8, 8), stride=2)[0, 3, 2].item() == pytest.approx(1.0)  # a list of images


def test_count_kind_counts_the_input_pixels_each_label_pixel_covers():
    rng = np.random.default_rng(4)
    pts, points, offsets = _packed(rng, [40, 7], 64)
    for stride in (1, 4, 8):
        got = CountLabel().make(points, (64 // stride, 64 // stride), offsets, stride=stride)
        want = reference.count_maps(pts, (64, 64), stride)
        np.testing.assert_array_equal(got.numpy(), want)
        inside = [((np.floor(p + 0.5) >= 0) & (np.floor(p + 0.5) < 64)).all(axis=1).sum() for p in pts]
        assert got.sum(dim=(1, 2)).tolist() == inside


def test_parameters_name_their_defaults_and_help():
    assert list(KINDS) == ["iknn", "density", "fidt", "count"]
    for name, cls in KINDS.items():
        assert cls.name == name and cls().kind == name and cls.summary
        for f in cls.parameters():
            assert f.metadata["help"], (name, f.name)
    assert {f.name: f.default for f in FidtLabel.parameters()} == {"alpha": 0.02, "beta": 0.75, "c": 1.0,
                                                                     "zero_below": 0.0}
    assert {f.name: f.default for f in DensityLabel.parameters()} == {"sigma": "adaptive", "k": 3, "beta": 0.3,
                                                                        "truncate": 4.0}
    assert CountLabel.parameters() == []


@pytest.mark.parametrize("kind, bad, words", [
    ("iknn", dict(k=0), "k must be in [1, 64]"), ("iknn", dict(k="3"), "k must be an integer"),
    ("iknn", dict(transform="log"), "transform must be one of"), ("iknn", dict(max_distance=-1.0), "max_distance"),
    ("density", dict(sigma="fixed"), "sigma must be 'adaptive'"), ("density", dict(sigma=-2.0), "sigma"),
    ("density", dict(k=64), "k must be in [1, 63]"), ("density", dict(beta=0.0), "beta"),
    ("density", dict(truncate=1000.0), "truncate must be at most 100"),
    ("fidt", dict(alpha=-0.1), "alpha"), ("fidt", dict(beta=-1.0), "beta"), ("fidt", dict(c=0.0), "c must be positive"),
    ("fidt", dict(zero_below=-1.0), "zero_below"), ("fidt", dict(alpha="0.1"), "alpha must be a number"),
])
def test_bad_parameters_name_the_kind_and_the_parameter(kind, bad, words):
    with pytest.raises(ValueError, match=f"label kind {kind}") as info:
        label_kinds.label_kind(kind, **bad)
    assert words in str(info.value)


def test_make_refuses_a_stride_that_is_no_positive_integer_and_takes_numpy_scalars():
    pts, offsets = torch.tensor([[10.0, 6.0], [3.0, 12.0]]), torch.tensor([0, 2])
    for kind in (IknnLabel(), DensityLabel(), FidtLabel(), CountLabel()):
        for stride in (0, -2, 2.5, True):
            with pytest.raises(ValueError, match="stride must be a positive integer"):
                kind.make(pts, (8, 8), offsets, stride=stride)
        assert torch.equal(kind.make(pts, (8, 8), offsets, stride=np.int64(2)), kind.make(pts, (8, 8), offsets, stride=2))
    # numpy scalars are settings like Python numbers (saved as those: checkpoints hold JSON values)
    assert IknnLabel(k=np.int64(2)) == IknnLabel(k=2) and type(IknnLabel(k=np.int64(2)).k) is int
    assert type(DensityLabel(sigma=np.float32(2.0)).sigma) is float
    with pytest.raises(ValueError, match="label kind fidt: beta must be non-negative and finite"):
        FidtLabel(beta=10**400)


def test_round_trip_and_unknown_settings():
    for kind in (IknnLabel(k=3, transform="inverse_sqrt", max_distance=112.0), DensityLabel(sigma=1.5, beta=0.2),
                 FidtLabel(alpha=0.05, zero_below=0.01), CountLabel()):
        assert label_kinds.from_dict(kind.to_dict()) == kind
    assert label_kinds.from_dict({"kind": "fidt"}) == FidtLabel() and label_kinds.from_dict({}) == IknnLabel()
    with pytest.raises(ValueError, match=r"label kind iknn has no setting radius \(its settings: k, transform"):
        label_kinds.from_dict({"kind": "iknn", "radius": 3})
    with pytest.raises(ValueError, match="label kind count has no setting alpha"):
        label_kinds.from_dict({"kind": "count", "alpha": 0.1})
    with pytest.raises(ValueError, match="must be one of iknn, density, fidt, count"):
        label_kinds.from_dict({"kind": "gauss"})


def test_the_flat_form_of_old_checkpoints_still_loads(tmp_path):
    # mud_iknn.loss.LabelSpec.to_dict() before the registry: every kind's options in one dict.
    flat = {"kind": "iknn", "k": None, "transform": "inverse_sqrt", "max_distance": 112.0, "sigma": "adaptive",
            "beta": 0.3, "truncate": 4.0}
    assert label_kinds.from_dict(flat) == IknnLabel(k=1, transform="inverse_sqrt", max_distance=112.0)
    assert label_kinds.from_dict({**flat, "kind": "density", "k": 5, "sigma": 2.0}) == DensityLabel(sigma=2.0, k=5)
    assert label_kinds.from_dict({**flat, "kind": "density"}) == DensityLabel()
    # a whole checkpoint written with the flat label loads, and resumes
    from mud_iknn.train import TrainConfig, load_checkpoint, read_checkpoint, save_checkpoint, build_model

    config = TrainConfig.small(out_dir=str(tmp_path))
    path = save_checkpoint(tmp_path / "checkpoint.pt", build_model(config, load_weights=False), config)
    state = torch.load(path, weights_only=True)
    state["config"]["label"] = {**flat, "kind": "density", "k": None}
    torch.save(state, path)
    assert read_checkpoint(path)["config"]["label"]["k"] is None
    _, loaded, _ = load_checkpoint(path)
    assert loaded.label == DensityLabel() and loaded.to_dict()["label"] == {"kind": "density", **DensityLabel().to_dict()}


@pytest.mark.parametrize("kind, label_size", [(FidtLabel(), None), (CountLabel(), 8)])
def test_training_learns_the_maps_of_its_kind(tmp_path, monkeypatch, kind, label_size):
    # The loss gets the kind's maps at the map modules' size and stride (count maps: a label pixel
    # covers stride x stride input pixels, and each map sums to its crop's count; no flips, whose
    # x -> W - 1 - x moves heads across the count's [0, W) edges); the checkpoint keeps the kind.
    from synthetic import Blobs

    import mud_iknn.train as engine

    seen = []
    forward = engine.MUDLoss.forward

    def spy(self, maps, counts, label, true_counts):
        seen.append((maps.shape, label.clone(), true_counts.clone()))
        return forward(self, maps, counts, label, true_counts)

    monkeypatch.setattr(engine.MUDLoss, "forward", spy)
    config = engine.TrainConfig(steps=1, batch_size=4, patch_size=32, lr=1e-3, backbone="densenet_tiny", num_workers=0,
                                device="cpu", out_dir=str(tmp_path), checkpoint_every=0, log_every=1, progress=False,
                                label=kind, label_size=label_size, flip_p=0.0)
    result = engine.train(config, Blobs(n=4, size=48))
    assert len(seen) == 1 and all(np.isfinite(r["loss"]) for r in [result["train"]])
    for maps_shape, label, true_counts in seen:
        assert label.shape == (maps_shape[0], *maps_shape[2:]) == (4, label_size or 32, label_size or 32)
        if isinstance(kind, CountLabel):
            torch.testing.assert_close(label.sum(dim=(1, 2)), true_counts.float())
        else:
            assert float(label.max()) <= 1.0 and float(label.min()) >= 0.0
    _, loaded, _ = engine.load_checkpoint(result["checkpoint"])
    assert loaded.label == kind


def test_count_kind_takes_the_input_size_where_the_stride_does_not_divide_it():
    points = torch.tensor([[36.4, 20.4], [36.6, 3.0], [38.0, 5.0], [4.0, 23.0]])
    got = CountLabel().make(points, (3, 5), stride=8, input_size=(21, 37))
    np.testing.assert_array_equal(got.numpy(), reference.count_maps(points.numpy(), (21, 37), 8))
    assert got.sum() == 1
    assert CountLabel().make(points, (3, 5), stride=8).sum() == 4  # the default input: 24 x 40
    # the distance kinds: heads outside are heads, the input size changes nothing
    assert torch.equal(IknnLabel().make(points, (3, 5), stride=8, input_size=(21, 37)),
                       IknnLabel().make(points, (3, 5), stride=8))
    with pytest.raises(ValueError, match="input_size"):
        CountLabel().make(points, (3, 5), stride=8, input_size=(40, 41))
