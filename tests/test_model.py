"""The MUD-ikNN network: shapes, summed counts, frozen BatchNorm, map modules on other backbones."""
import re

import pytest
import torch
import torchvision
from torch import nn

from mud_iknn.model import MUDIKNN, MapModule, MapNetwork, _BlockConvTranspose2d, _ExtentConv, build_backbone


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def densenet201():
    torch.manual_seed(0)
    return MUDIKNN(weights=None).eval()


def test_densenet201_layout_and_224_shapes(densenet201):
    m = densenet201
    assert [mod.upsample.in_channels for mod in m.map_modules] == [128, 256, 896]
    assert [mod.factor for mod in m.map_modules] == [8, 16, 32]
    assert m.final_count.in_channels == 1920
    assert tuple(m.map_modules[0].count_head.weight.shape) == (1, 32, 28, 28)
    with torch.no_grad():
        maps, counts = m(torch.rand(2, 3, 224, 224))
    assert maps.shape == (2, 3, 224, 224) and counts.shape == (2,)
    with torch.no_grad():
        maps, counts = m(torch.rand(1, 3, 100, 150))
    assert maps.shape == (1, 3, 100, 150) and counts.shape == (1,)


def test_count_is_the_sum_of_the_four_heads(densenet201):
    m = densenet201
    parts = []
    hooks = [mod.register_forward_hook(lambda _m, _i, out: parts.append(out[1])) for mod in m.map_modules]
    hooks.append(m.final_count.register_forward_hook(
        lambda _m, _i, out: parts.append(nn.functional.leaky_relu(out, 0.01).flatten())))
    try:
        with torch.no_grad():
            _, counts = m(torch.rand(2, 3, 224, 224))
    finally:
        for h in hooks:
            h.remove()
    assert len(parts) == 4
    torch.testing.assert_close(counts, parts[0] + parts[1] + parts[2] + parts[3])


def test_small_model_other_sizes_and_label_size():
    torch.manual_seed(0)
    m = MUDIKNN.small(input_size=64)
    assert m.backbone_name == "densenet_tiny" and sum(p.numel() for p in m.parameters()) < 300_000
    for h, w in [(64, 64), (96, 128), (50, 70)]:
        maps, counts = m(torch.rand(2, 3, h, w))
        assert maps.shape == (2, 3, h, w) and counts.shape == (2,)
    half = MUDIKNN.small(input_size=64, label_size=16)
    assert half.label_stride == 4 and [mod.factor for mod in half.map_modules] == [2, 4, 8]
    assert half(torch.rand(1, 3, 64, 64))[0].shape == (1, 3, 16, 16)
    assert half(torch.rand(1, 3, 70, 90))[0].shape == (1, 3, 18, 23)
    for bad in [3, 48, 128]:
        with pytest.raises(ValueError, match="label_size"):
            MUDIKNN.small(input_size=64, label_size=bad)
    with pytest.raises(ValueError, match="map_channels"):
        MUDIKNN.small(map_channels=2)
    with pytest.raises(ValueError, match="backbone"):
        MUDIKNN(backbone="resnet9")


def test_normalisation_inside_the_model():
    m = MUDIKNN.small(normalization="tanh")
    grey = torch.full((1, 3, 4, 4), 0.5)
    assert torch.allclose(m.normalize(grey), torch.zeros_like(grey))
    u8 = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    assert torch.allclose(m.normalize(u8), u8.float() / 127.5 - 1, atol=1e-6)
    imagenet = MUDIKNN.small()
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    assert torch.allclose(imagenet.normalize(mean.expand(1, 3, 4, 4)), torch.zeros(1, 3, 4, 4), atol=1e-6)
    with pytest.raises(ValueError, match="normalization"):
        MUDIKNN.small(normalization="minmax")
    with pytest.raises(TypeError, match="images"):
        m(torch.zeros(1, 3, 64, 64, dtype=torch.int32))


def test_frozen_batchnorm_is_really_frozen():
    torch.manual_seed(0)
    m = MUDIKNN.small().train()
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert m.map_modules[0].training  # the rest trains
    before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k or "num_batches" in k}
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(2):
        maps, counts = m(torch.rand(2, 3, 64, 64))
        (maps.square().mean() + counts.square().mean()).backward()
        opt.step()
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and BatchNorm affine parameters still learn
    assert not torch.equal(bns[0].weight, torch.ones_like(bns[0].weight))
    # control: unfrozen BatchNorm does update its statistics
    free = MUDIKNN.small(frozen_batchnorm=False).train()
    free(torch.rand(2, 3, 64, 64))
    assert free.state_dict()["features.features.norm0.running_mean"].abs().sum() > 0


def test_map_modules_on_resnet50():
    torch.manual_seed(0)
    net = MapNetwork(torchvision.models.resnet50(weights=None), ["layer1", "layer2", "layer3"], "layer4",
                     input_size=64)
    assert net.strides == (4, 8, 16)
    assert [mod.upsample.in_channels for mod in net.map_modules] == [256, 512, 1024]
    assert net.final_count.in_channels == 2048
    maps, counts = net(torch.rand(2, 3, 64, 64))
    assert maps.shape == (2, 3, 64, 64) and counts.shape == (2,)
    (maps.mean() + counts.sum()).backward()
    assert net.features.conv1.weight.grad.abs().sum() > 0  # gradients reach the backbone
    with pytest.raises(ValueError, match="nodes"):
        MapNetwork(torchvision.models.resnet50(weights=None), ["layer9"], input_size=64)


def test_map_module_shapes():
    mod = MapModule(in_channels=5, factor=4, count_extent=4)
    density, count = mod(torch.rand(3, 5, 8, 8))
    assert density.shape == (3, 1, 32, 32) and count.shape == (3,)
    with pytest.raises(ValueError, match="factor"):
        MapModule(5, 0)


@pytest.mark.parametrize("c_in, c_out, factor, size", [(5, 1, 4, (3, 2)), (3, 2, 2, (4, 4)), (7, 1, 1, (2, 3)),
                                                      (4, 1, 16, (1, 2))])
def test_block_transposed_conv_is_the_transposed_conv(c_in, c_out, factor, size):
    torch.manual_seed(0)
    reference = nn.ConvTranspose2d(c_in, c_out, kernel_size=factor, stride=factor)
    block = _BlockConvTranspose2d(c_in, c_out, factor)
    block.load_state_dict(reference.state_dict())  # the same parameters and keys
    x = torch.randn(2, c_in, *size, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, want = block(x), reference(x_ref)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    upstream = torch.randn_like(want)
    out.backward(upstream)
    want.backward(upstream)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(block.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)


def test_extent_conv_scales_with_area():
    conv = _ExtentConv(2, 1, kernel_size=4, bias=False)
    nn.init.constant_(conv.weight, 0.25)
    x = torch.ones(1, 2, 4, 4)
    torch.testing.assert_close(conv(x), nn.functional.conv2d(x, conv.weight))
    # a twice larger extent: the resampled kernel keeps its per-location weight, the sum is 4x
    torch.testing.assert_close(conv(torch.ones(1, 2, 8, 8)), 4 * conv(x))


def test_local_weights_file(tmp_path):
    torch.manual_seed(1)
    source = build_backbone("densenet_tiny")
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    m = MUDIKNN.small(weights=str(path))
    torch.testing.assert_close(m.features.features.conv0.weight, source.features.conv0.weight)
    # torchvision's released files name a dense layer's parts the old way ("norm.1") and predate
    # BatchNorm's num_batches_tracked: they load too
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)", r"\1.\2", k): v for k, v in source.state_dict().items()
           if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "released.pth")
    released = build_backbone("densenet_tiny", weights=tmp_path / "released.pth")
    assert all(torch.equal(a, b) for a, b in zip(released.state_dict().values(), source.state_dict().values()))
    (tmp_path / "junk.pt").write_text("not a state dict")
    with pytest.raises(ValueError, match="junk.pt"):
        MUDIKNN.small(weights=tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="missing.pt"):
        MUDIKNN.small(weights=tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="weights"):
        MUDIKNN.small(weights=3)


def test_imagenet_weights_use_torchvision_enum(monkeypatch):
    import mud_iknn.model as model_module
    asked = []

    def factory(weights=None):
        asked.append(weights)
        return torchvision.models.DenseNet(growth_rate=12, block_config=(2, 4, 4, 2), num_init_features=24)

    monkeypatch.setitem(model_module._DENSENETS, "densenet121", (factory, "DenseNet121_Weights"))
    MUDIKNN(weights="imagenet", backbone="densenet121", input_size=64)  # no download: the factory is fake
    assert asked == [torchvision.models.DenseNet121_Weights.IMAGENET1K_V1]
    with pytest.raises(ValueError, match="imagenet"):
        MUDIKNN.small(weights="imagenet")

    def offline(weights=None):  # what torchvision raises without internet and an empty cache
        raise __import__("urllib.error").error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setitem(model_module._DENSENETS, "densenet121", (offline, "DenseNet121_Weights"))
    with pytest.raises(ValueError, match="densenet121 weights are not in its cache.*local state dict"):
        MUDIKNN(weights="imagenet", backbone="densenet121", input_size=64)


def _final_head_count(net, images):
    """The final count head's output, recomputed from the backbone's count-layer features by hand:
    LeakyReLU(0.01)(1x1 conv(global mean of ReLU(features)))."""
    feats = net.features(net.normalize(images))[net.count_layer]
    pooled = feats.relu().mean(dim=(2, 3))
    conv = net.final_count
    return nn.functional.leaky_relu(pooled @ conv.weight.flatten(1).T + conv.bias, 0.01).flatten()


def test_count_only_network_shapes_and_final_head_count():
    torch.manual_seed(0)
    full = MUDIKNN.small(input_size=64).eval()
    only = MUDIKNN.small(input_size=64, map_modules=False).eval()
    assert only.map_channels == 0 and len(only.map_modules) == 0 and only.strides == ()
    assert only.final_count.in_channels == full.final_count.in_channels
    # the same backbone and final head, without the map modules' parameters
    assert set(only.state_dict()) == {k for k in full.state_dict() if not k.startswith("map_modules.")}
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps, counts = only(images)
        want = _final_head_count(only, images)
    assert maps.shape == (2, 0, 64, 64) and maps.dtype == torch.float32 and counts.shape == (2,)
    torch.testing.assert_close(counts, want)
    # with the full network's backbone and head weights, the count is exactly the full network's
    # final-head term (its total minus the three map modules' counts), also on a padded odd size
    only.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("map_modules.")})
    module_counts = []
    hooks = [mod.register_forward_hook(lambda _m, _i, out: module_counts.append(out[1])) for mod in full.map_modules]
    try:
        with torch.no_grad():
            for x in (images, torch.rand(1, 3, 50, 70)):
                module_counts.clear()
                total = full(x)[1]
                maps, counts = only(x)
                assert maps.shape == (x.shape[0], 0, *x.shape[-2:])
                torch.testing.assert_close(counts, total - sum(module_counts), atol=1e-5, rtol=1e-5)
    finally:
        for h in hooks:
            h.remove()
    # label_size makes the (empty) maps smaller, as for the full network
    assert MUDIKNN.small(input_size=64, label_size=16, map_modules=False)(images)[0].shape == (2, 0, 16, 16)


def test_count_only_network_trains_its_backbone():
    torch.manual_seed(0)
    only = MapNetwork(torchvision.models.resnet18(weights=None), [], "layer4", input_size=64).train()
    assert only.map_channels == 0 and only._pad_multiple == 32
    maps, counts = only(torch.rand(2, 3, 64, 64))
    assert maps.shape == (2, 0, 64, 64)
    counts.sum().backward()
    assert only.features.conv1.weight.grad.abs().sum() > 0 and only.final_count.weight.grad is not None


def test_network_needs_map_layers_or_a_count_layer():
    with pytest.raises(ValueError, match="map_layers.*count_layer"):
        MapNetwork(build_backbone("densenet_tiny"), [], None, input_size=64)
    with pytest.raises(ValueError, match="map_layers.*count_layer"):
        MapNetwork(build_backbone("densenet_tiny"), (), input_size=64)
    with pytest.raises(TypeError, match="map_modules"):
        MUDIKNN.small(map_modules="no")
