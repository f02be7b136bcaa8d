"""The MUD-ikNN network: a CNN backbone with multiscale upsampling "map modules" and summed counts.

:class:`MapModule` turns one intermediate feature map into a full-resolution map and a count.
:class:`MapNetwork` attaches map modules to any named layers of any torchvision backbone (through
``torchvision.models.feature_extraction``) and adds a final count from pooled last features.
:class:`MUDIKNN` is the paper's configuration on DenseNet-201 (map modules on the three transition
layers: 128 channels at 1/8, 256 at 1/16, 896 at 1/32 of the input; final count on norm5 + ReLU).
``MUDIKNN(map_modules=False)`` is the count-only network of the same backbone (the paper's
comparison of the map modules against the final count head alone): no map modules, the count is
the final head's.

Images go in as float (B, 3, H, W) in [0, 1] (or uint8 in [0, 255]); normalisation happens inside.
Out come ``maps`` (B, M, H', W') float and ``counts`` (B,) float (heads), where (H', W') is the label
size: (H, W) by default (the full-resolution comparison the paper argues for), or (H, W) divided by
``label_stride``, and M is the number of map modules (3 for MUD-ikNN, 0 for a count-only network,
whose maps are an empty tensor).

Small configuration for CPU demos and tests: ``MUDIKNN.small(input_size=64)`` (or
``TrainConfig(backbone="densenet_tiny", patch_size=64)``) keeps the architecture on a reduced
DenseNet of about 0.17 M parameters. On a 2-core CPU (one thread), 400 steps of batch 8 at 64 px
on a synthetic blob set took about 15 s and brought the validation MAE from 3.8 to 2.2 heads
(2026-11-26); DenseNet-201 needs about half a second per batch-4 step there.
``TrainConfig.small()`` is the matching training configuration.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

__all__ = ["MapModule", "MapNetwork", "MUDIKNN", "build_backbone", "freeze_batchnorm", "BACKBONES",
           "DENSENET_LAYERS", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NEGATIVE_SLOPE = 0.01

#: Layers of a torchvision DenseNet that MUD-ikNN reads: the three transition layers (map modules)
#: and norm5 (final count).
DENSENET_LAYERS = ("features.transition1", "features.transition2", "features.transition3")
DENSENET_COUNT_LAYER = "features.norm5"

#: Backbones by name. "densenet_tiny" is a reduced DenseNet (growth 12, blocks 2-4-4-2, 24 initial
#: features, about 0.17 M parameters) for CPU demos and tests; it has no pretrained weights.
_DENSENETS = {
    "densenet121": (torchvision.models.densenet121, "DenseNet121_Weights"),
    "densenet169": (torchvision.models.densenet169, "DenseNet169_Weights"),
    "densenet201": (torchvision.models.densenet201, "DenseNet201_Weights"),
    "densenet_tiny": (lambda weights=None: torchvision.models.DenseNet(
        growth_rate=12, block_config=(2, 4, 4, 2), num_init_features=24), None),
}
BACKBONES = tuple(_DENSENETS)


# torchvision's released DenseNet files name a dense layer's parts "norm.1", "conv.2", ...; its
# models (since torchvision 0.3) "norm1", "conv2": torchvision renames them when it loads those files.
_OLD_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _current_densenet_keys(state: dict) -> dict:
    """``state`` with the old dense-layer keys of torchvision's released files in today's form."""
    renamed = {}
    for key, value in state.items():
        match = _OLD_DENSE_LAYER_KEY.match(key) if isinstance(key, str) else None
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def build_backbone(name: str = "densenet201", weights: Union[None, str, os.PathLike] = None) -> nn.Module:
    """A torchvision DenseNet by ``name`` (one of :data:`BACKBONES`) with ``weights``.

    ``weights``: None (random init), ``"imagenet"`` (torchvision's IMAGENET1K_V1 enum; downloads
    where there is internet) or the path of a local state dict of that torchvision model (such as
    the hub's densenet201-c1103571.pth copied from a machine with internet).
    """
    if name not in _DENSENETS:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    factory, enum_name = _DENSENETS[name]
    if weights is None:
        return factory(weights=None)
    if isinstance(weights, str) and weights == "imagenet":
        if enum_name is None:
            raise ValueError(f"weights='imagenet' is not available for backbone {name!r}")
        try:
            return factory(weights=getattr(torchvision.models, enum_name).IMAGENET1K_V1)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; a cut download a RuntimeError
            raise ValueError(f"weights='imagenet': torchvision's {name} weights are not in its cache and could "
                             f"not be fetched ({err}); on a machine without internet pass the path of a local "
                             f"state dict instead") from None
    if isinstance(weights, (str, bytes)) or hasattr(weights, "__fspath__"):
        model = factory(weights=None)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ValueError(f"weights file {weights!s} does not exist") from None
        except Exception as err:  # unpickling errors have no common base class
            raise ValueError(f"weights file {weights!s} is not a torch state dict: {err}") from None
        if not isinstance(state, dict):
            raise ValueError(f"weights file {weights!s} does not hold a state dict")
        try:
            model.load_state_dict(_current_densenet_keys(state))
        except RuntimeError as err:
            raise ValueError(f"weights file {weights!s} does not fit backbone {name!r}: {err}") from None
        return model
    raise TypeError(f"weights must be None, 'imagenet' or a file path, got {weights!r}")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Puts every BatchNorm layer of ``module`` in eval mode (running statistics used, never updated).

    The affine parameters still train. :class:`MapNetwork` calls this from ``train()`` when built
    with ``frozen_batchnorm=True``, as the authors' code does.
    """
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()
    return module


class _ExtentConv(nn.Conv2d):
    """A convolution whose kernel covers the whole (h, w) input it was built for: one value per image.

    On an input of another extent the kernel is resampled bilinearly to that extent, so every
    location keeps (about) its weight and the result scales with the area, as a count should.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if tuple(x.shape[-2:]) != tuple(weight.shape[-2:]):
            c_out, c_in = weight.shape[:2]
            weight = F.interpolate(weight.reshape(1, c_out * c_in, *weight.shape[-2:]),
                                   size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
            weight = weight.reshape(c_out, c_in, *x.shape[-2:])
        return F.conv2d(x, weight, self.bias)


class _BlockConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d(c_in -> c_out, kernel = stride = f): each input pixel writes its own f x f
    block, so it runs as a 1x1 convolution to the c_out * f * f block values and a pixel shuffle
    (the same sums, faster on CPUs: bench/RESULTS.md). Parameters and state-dict keys are
    ConvTranspose2d's."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__(in_channels, out_channels, kernel_size=factor, stride=factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, c_out = self.stride[0], self.out_channels
        # weight (c_in, c_out, f, f) -> (c_out * f * f, c_in, 1, 1), pixel_shuffle's channel order
        weight = self.weight.flatten(1).t().reshape(c_out * f * f, self.in_channels, 1, 1)
        return F.pixel_shuffle(F.conv2d(x, weight, self.bias.repeat_interleave(f * f)), f)


class MapModule(nn.Module):
    """Upsamples one feature map to a one-channel map at label size, and counts from that map.

    Map: ConvTranspose2d(in_channels -> 1, kernel = stride = ``factor``) + LeakyReLU(0.01).
    Count branch on the map: three 2x2 stride-2 convolutions 1 -> 8 -> 16 -> 32, each followed by
    LeakyReLU(0.01), then one convolution 32 -> 1 over the remaining extent ``count_extent``
    (28 x 28 for a 224 label); see :class:`_ExtentConv` for other extents.

    Input (B, in_channels, h, w); returns map (B, 1, h * factor, w * factor) and count (B,).
    """

    def __init__(self, in_channels: int, factor: int, count_extent: Union[int, Sequence[int]] = 28):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        extent = (count_extent, count_extent) if isinstance(count_extent, int) else tuple(count_extent)
        if len(extent) != 2 or min(extent) < 1:
            raise ValueError(f"count_extent must be a positive int or (h, w), got {count_extent!r}")
        self.factor = factor
        self.upsample = _BlockConvTranspose2d(in_channels, 1, factor)
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 8), (8, 16), (16, 32)):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=2, stride=2),
                       nn.LeakyReLU(_NEGATIVE_SLOPE)]
        self.count_features = nn.Sequential(*layers)
        self.count_head = _ExtentConv(32, 1, kernel_size=extent)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        density = F.leaky_relu(self.upsample(features), _NEGATIVE_SLOPE)
        count = self.count_head(self.count_features(density)).flatten(1).sum(1)
        return density, count


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _layer_stride(name: str, shape: Sequence[int], input_size: int) -> int:
    """The stride (input pixels per feature pixel) of layer ``name``, whose output is ``shape``
    (C, h, w) on an ``input_size`` square input; ValueError unless it is a power of two dividing it."""
    if len(shape) != 3:
        raise ValueError(f"layer {name!r} gives {tuple(shape)} per image, not a (C, h, w) feature map")
    _, h, w = shape
    stride = input_size // h
    if stride * h != input_size or input_size // w != stride or not _is_power_of_two(stride):
        raise ValueError(f"layer {name!r} has extent {h}x{w} on a {input_size} input: its stride "
                         f"must be a power of two dividing input_size")
    return stride


class MapNetwork(nn.Module):
    """Map modules on named layers of a backbone, plus a final count; counts summed.

    backbone: any nn.Module taking (B, 3, H, W) images (a torchvision classifier, say).
    map_layers: names (``torchvision.models.feature_extraction`` node names) of the layers whose
    outputs get a :class:`MapModule`; their strides must be powers of two. Empty for a count-only
    network (then ``count_layer`` is required).
    count_layer: name of the layer for the final count: ReLU, global average pool, 1x1 conv -> 1,
    LeakyReLU(0.01). None for no final count (then ``map_layers`` must name at least one layer).
    input_size: the training patch size (224); fixes the count branches' extent.
    label_stride: the maps are (H, W) / label_stride; 1 (default) is full resolution. A power of
    two no larger than the smallest map-layer stride.
    normalization: "imagenet" ((x - mean) / std) or "tanh" (2x - 1, the original x / 127.5 - 1).
    frozen_batchnorm: keep BatchNorm layers in eval mode even in ``train()``.

    forward(images (B, 3, H, W) float in [0, 1] or uint8) -> (maps (B, M, H / s, W / s),
    counts (B,) in heads), M = ``map_channels`` = len(map_layers), one channel per map module; the
    count is the sum of the map modules' counts and the final count. H and W need not be multiples
    of the largest stride: the normalised image is zero-padded at the bottom and right (to a
    multiple of the largest map-layer stride and of 8 * label_stride; of the count layer's stride
    for a count-only network) and the maps are cropped back. A count-only network returns maps of
    shape (B, 0, H / s, W / s) (on the images' device, in the count's dtype) and the final count.
    """

    #: Layout of the weights and of the backbone's input: channels last (NHWC), which oneDNN's CPU
    #: convolutions (and cuDNN's tensor cores) run fastest on (bench/bench_model_step.py).
    memory_format: torch.memory_format = torch.channels_last

    def __init__(self, backbone: nn.Module, map_layers: Sequence[str], count_layer: Optional[str] = None,
                 *, input_size: int = 224, label_stride: int = 1, normalization: str = "imagenet",
                 frozen_batchnorm: bool = True):
        super().__init__()
        if normalization not in ("imagenet", "tanh"):
            raise ValueError(f"normalization must be 'imagenet' or 'tanh', got {normalization!r}")
        if not map_layers and count_layer is None:
            raise ValueError("map_layers is empty and count_layer is None: a MapNetwork needs at least one "
                             "map layer or a count layer")
        if isinstance(label_stride, bool) or not isinstance(label_stride, int) or not _is_power_of_two(label_stride):
            raise ValueError(f"label_stride must be a power of two, got {label_stride!r}")
        self.map_layers = tuple(map_layers)
        self.count_layer = count_layer
        self.input_size = int(input_size)
        self.label_stride = label_stride
        self.normalization = normalization
        self.frozen_batchnorm = frozen_batchnorm
        if input_size % label_stride:
            raise ValueError(f"input_size {input_size} is not a multiple of label_stride {label_stride}")
        nodes = {name: name for name in self.map_layers}
        if count_layer is not None:
            nodes[count_layer] = count_layer
        try:
            self.features = create_feature_extractor(backbone, nodes)
        except Exception as err:
            raise ValueError(f"map_layers/count_layer {sorted(nodes)} are not all nodes of the backbone: "
                             f"{err}") from None
        shapes = self._probe(input_size)
        strides = []
        for name in self.map_layers:
            stride = _layer_stride(name, shapes[name], input_size)
            if stride < label_stride:
                raise ValueError(f"layer {name!r} has stride {stride}, finer than label_stride {label_stride}")
            strides.append(stride)
        #: the map layers' strides (input pixels per feature pixel), in map_layers order
        self.strides = tuple(strides)
        if strides:
            self._pad_multiple = max(max(strides), 8 * label_stride)
        else:  # count-only: whole feature pixels under the final head (for MUD-ikNN the same padding
            # as the full network's, whose coarsest map layer has the count layer's stride)
            self._pad_multiple = _layer_stride(count_layer, shapes[count_layer], input_size)
        label = input_size // label_stride
        extent = label // 8
        if strides and extent < 1:
            raise ValueError(f"the label size {label} must be at least 8 for the count branches")
        self.map_modules = nn.ModuleList(
            MapModule(shapes[name][0], stride // label_stride, extent) for name, stride in zip(self.map_layers, strides))
        self.final_count = nn.Conv2d(shapes[count_layer][0], 1, kernel_size=1) if count_layer else None
        mean, std = ((IMAGENET_MEAN, IMAGENET_STD) if normalization == "imagenet" else ((0.5,) * 3, (0.5,) * 3))
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1), persistent=False)
        self.to(memory_format=self.memory_format)

    @torch.no_grad()
    def _probe(self, size: int) -> dict[str, tuple[int, int, int]]:
        was_training = self.features.training
        self.features.eval()
        try:
            out = self.features(torch.zeros(1, 3, size, size))
        finally:
            self.features.train(was_training)
        return {name: tuple(value.shape[1:]) for name, value in out.items()}

    @property
    def map_channels(self) -> int:
        """M, the channels of the maps: one per map module (0 for a count-only network)."""
        return len(self.map_modules)

    def label_shape(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') of the maps for an (H, W) input (pixels): ceil(H / s), ceil(W / s)."""
        s = self.label_stride
        return -(-height // s), -(-width // s)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.frozen_batchnorm:
            freeze_batchnorm(self)
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] or uint8 -> the backbone's input (float)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = images.shape[-2:]
        x = self.normalize(images)
        m = self._pad_multiple
        pad_h, pad_w = -height % m, -width % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.features(x.contiguous(memory_format=self.memory_format))
        maps, counts = [], []
        for name, module in zip(self.map_layers, self.map_modules):
            density, count = module(feats[name])
            maps.append(density)
            counts.append(count)
        if self.final_count is not None:
            pooled = F.adaptive_avg_pool2d(F.relu(feats[self.count_layer]), 1)
            counts.append(F.leaky_relu(self.final_count(pooled), _NEGATIVE_SLOPE).flatten())
        label_h, label_w = self.label_shape(height, width)
        if maps:
            maps = torch.cat(maps, dim=1)[:, :, :label_h, :label_w]
        else:
            maps = counts[0].new_zeros((images.shape[0], 0, label_h, label_w))
        return maps, torch.stack(counts, dim=0).sum(0)


class MUDIKNN(MapNetwork):
    """The MUD-ikNN network of the paper on a torchvision DenseNet.

    backbone: "densenet201" (the paper's), "densenet121", "densenet169" or "densenet_tiny" (see
    :meth:`small`). weights: None, "imagenet" or a local state-dict path (see :func:`build_backbone`).
    label_size: None for maps at the input size (default); else the label size (int) for a
    ``input_size`` patch, which must be input_size / 2^j with 2^j <= 8 (e.g. 112 or 56 for 224).
    map_channels: 3, one per transition layer (the only value the architecture has).
    map_modules: True (default) for the paper's network; False for the count-only network of the
    same backbone (no map modules; maps (B, 0, H', W'), the count is the final head's alone).
    Other arguments as in :class:`MapNetwork`.
    """

    def __init__(self, weights=None, label_size: Optional[int] = None, normalization: str = "imagenet",
                 map_channels: int = 3, *, backbone: str = "densenet201", input_size: int = 224,
                 frozen_batchnorm: bool = True, map_modules: bool = True):
        if map_channels != len(DENSENET_LAYERS):
            raise ValueError(f"map_channels must be {len(DENSENET_LAYERS)} (one per transition layer), "
                             f"got {map_channels!r}")
        if label_size is None:
            label_stride = 1
        else:
            if isinstance(label_size, bool) or not isinstance(label_size, int) or label_size < 1 \
                    or input_size % label_size or not _is_power_of_two(input_size // label_size) \
                    or input_size // label_size > 8:
                raise ValueError(f"label_size must be input_size ({input_size}) divided by 1, 2, 4 or 8, "
                                 f"got {label_size!r}")
            label_stride = input_size // label_size
        if not isinstance(map_modules, bool):
            raise TypeError(f"map_modules must be True or False, got {map_modules!r}")
        super().__init__(build_backbone(backbone, weights), DENSENET_LAYERS if map_modules else (),
                         DENSENET_COUNT_LAYER,
                         input_size=input_size, label_stride=label_stride, normalization=normalization,
                         frozen_batchnorm=frozen_batchnorm)
        self.backbone_name = backbone

    @classmethod
    def small(cls, input_size: int = 64, **kwargs) -> "MUDIKNN":
        """The same architecture on "densenet_tiny" (about 0.17 M parameters, random init) with a
        trained patch of ``input_size`` (multiple of 32): trains in minutes on a CPU at 64-128 px.
        """
        kwargs.setdefault("backbone", "densenet_tiny")
        return cls(input_size=input_size, **kwargs)
