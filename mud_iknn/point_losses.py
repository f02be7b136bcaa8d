"""Point-supervised losses without the N x (h * w) matrix: the Bayesian loss and DM-Count.

* :class:`BayesianLoss` (Ma et al., ICCV 2019, as Bayesian-Crowd-Counting's post_prob.py +
  bay_loss.py): each cell's posterior over the heads (and a background row), the expected count of
  each head, and the L1 distance of those counts to 1 (0 for the background).
* :class:`OTLoss` (Wang et al., NeurIPS 2020, as DM-Count's ot_loss.py with the Sinkhorn-Knopp of
  bregman_pytorch.py): entropic optimal transport between the normalised density and uniform mass
  on the heads; :class:`DMCountLoss` adds DM-Count's count and total-variation terms.

Conventions: a density is (B, 1, h, w), the prediction at ``stride`` input pixels per cell, cell
(r, c) centred at (c * stride + stride / 2, r * stride + stride / 2) in the points' frame; points are
a list of B (N_i, 2) (x, y) arrays in input pixels, or packed (P, 2) points with ``offsets`` (B + 1)
(see :func:`mud_iknn.pack_points`), on the density's device. The kernels (C++ and CUDA) sum in
double precision in a fixed order (deterministic, no atomics) and never form an N x (h * w) matrix:
a cell sums only the heads whose posterior term is within ln(1e16) of its largest (Bayesian loss),
and the Sinkhorn kernel exp(-C / reg) only where float32 does not round it to 0 (C <= reg * 103.97),
which is everything with normalised coordinates. docs/losses.md has the details.

``validate=True`` (each loss's default) checks on every call that the points are finite with sound
offsets and the densities finite (and non-negative where DM-Count needs it), one flag read back from
the device per check (a host synchronisation on CUDA); ``validate=False`` skips those value checks
(never the shapes, dtypes and devices) for a training loop whose inputs are known good: bad values
then give meaningless losses.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from . import _ops
from ._checks import is_integer
from .labels import PointsLike, _check_positive, _check_stride, count_maps, pack_points

__all__ = ["BayesianLoss", "OTLoss", "DMCountLoss"]


# ---- the extension boundary ----------------------------------------------------------------------
# The kernels run through mud_iknn._ops' backends (BACKENDS by device type), each filling its
# argument struct of csrc/point_losses.h.

def _point_map(module, points: torch.Tensor, offsets: torch.Tensor, cells: torch.Tensor, stride: int):
    """The PointMap of ``points`` (P, 2) / ``offsets`` (B + 1) against ``cells`` (B, h, w)."""
    _, height, width = cells.shape
    return _ops._fill(module.PointMap(), points=_ops._points(module, points, offsets), height=height, width=width,
                      stride=stride)


# ---- validation ------------------------------------------------------------------------------

def _check_density(density, name: str, dtype=torch.float32) -> torch.Tensor:
    """(B, h, w) ``dtype`` contiguous view of a (B, 1, h, w) floating tensor with cells."""
    if not isinstance(density, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(density).__name__}")
    if not density.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {density.dtype}")
    if density.dim() != 4 or density.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, h, w), got {tuple(density.shape)}")
    if density.shape[2] == 0 or density.shape[3] == 0:
        raise ValueError(f"{name} must have at least one cell, got shape {tuple(density.shape)}")
    if density.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on the CPU or a CUDA device, got {density.device}")
    return density[:, 0].to(dtype).contiguous()


def _result_dtype(density: torch.Tensor) -> torch.dtype:
    """The dtype the losses compute and return in: the density's, at least float32 (a float16 loss
    overflows past 65504 and rounds head counts past 2048)."""
    return torch.promote_types(density.dtype, torch.float32)


def _points_for(density: torch.Tensor, points: PointsLike, offsets,
                validate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed points and offsets for ``density`` (B, h, w): one image each, on its device."""
    packed, offs = pack_points(points, offsets, validate=validate)
    if offs.numel() - 1 != density.shape[0]:
        raise ValueError(f"points holds {offs.numel() - 1} images but density has batch size {density.shape[0]}")
    if packed.device != density.device:
        raise ValueError(f"points is on {packed.device} but density is on {density.device}")
    return packed, offs


# ---- Bayesian loss -----------------------------------------------------------------------------

class _BayesianExpected(torch.autograd.Function):
    """(P + B,) float64 expected counts: head i's at i, image b's background row at P + b (0 without
    one; for an image without heads, its density's sum). Linear in ``density`` (B, h, w)."""

    @staticmethod
    def forward(ctx, density, points, offsets, stride, sigma, background):
        batch, height, width = density.shape
        bg = background.data_ptr() if background is not None else 0

        def expected_of(part):  # the kernels read float32 cells
            expected = torch.empty(points.shape[0] + batch, dtype=torch.float64, device=density.device)
            _ops._run("bayesian_expected", density.device, lambda module: _ops._fill(
                module.BayesianArgs(), map=_point_map(module, points, offsets, part, stride), sigma=sigma,
                background=bg, density=part.data_ptr(), expected=expected.data_ptr()))
            return expected

        if density.dtype == torch.float64:
            # linear in the density: its float32 head and the float32 rest, each exact, add up to
            # the float64 density's expected counts to about 2^-48 (not float32's 2^-24)
            high = density.to(torch.float32)
            expected = expected_of(high) + expected_of((density - high.to(torch.float64)).to(torch.float32))
        else:
            expected = expected_of(density)
        ctx.save_for_backward(points, offsets, background)
        ctx.shape, ctx.stride, ctx.sigma, ctx.dtype = density.shape, stride, sigma, density.dtype
        return expected

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_expected):
        points, offsets, background = ctx.saved_tensors
        weights = grad_expected.to(torch.float64).contiguous()
        grad = torch.empty(ctx.shape, dtype=torch.float32, device=weights.device)
        bg = background.data_ptr() if background is not None else 0
        _ops._run("bayesian_backward", grad.device, lambda module: _ops._fill(
            module.BayesianArgs(), map=_point_map(module, points, offsets, grad, ctx.stride), sigma=ctx.sigma,
            background=bg, weights=weights.data_ptr(), grad=grad.data_ptr()))
        return grad.to(ctx.dtype), None, None, None, None, None


class BayesianLoss(nn.Module):
    """Bayesian loss (Ma et al., ICCV 2019) with bounded memory.

    Args:
        sigma: the likelihood's Gaussian width in input pixels (> 0).
        stride: input pixels per density cell (a positive integer).
        background: add the background row, of squared distance (d - sqrt(min_i dis))^2 with
            d = short_side * background_ratio.
        background_ratio: see ``background`` (> 0).
        validate: check the points' values on every call (see the module docstring).

    Called as ``criterion(density, points, short_sides=None, *, offsets=None)`` with ``density``
    (B, 1, h, w) and ``short_sides`` (B,) the images' short sides in pixels (default
    min(h, w) * stride); returns the scalar mean over images of sum |target - expected count|,
    differentiable in ``density``, in float64 for a float64 density (exact to float64 rounding; its
    gradient rounded to float32) and in float32 otherwise (the kernels read the cells in float32).
    """

    def __init__(self, sigma: float = 8.0, stride: int = 8, background: bool = True, background_ratio: float = 1.0,
                 validate: bool = True):
        super().__init__()
        self.validate = bool(validate)
        self.sigma = _check_positive(sigma, "sigma")
        self.stride = _check_stride(stride)
        self.background = bool(background)
        self.background_ratio = _check_positive(background_ratio, "background_ratio")

    def expected_counts(self, density: torch.Tensor, points: PointsLike, short_sides=None, *,
                        offsets=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) float64 expected counts of the packed heads and (B,) of the background rows (0
        without background; an image without heads: its density's sum); differentiable."""
        # float64 stays float64 (see _BayesianExpected); the kernels read other types as float32
        dens = _check_density(density, "density", torch.float64 if density.dtype == torch.float64 else torch.float32)
        packed, offs = _points_for(dens, points, offsets, self.validate)
        batch, height, width = dens.shape
        background = None
        if self.background:
            if short_sides is None:
                sides = torch.full((batch,), float(min(height, width) * self.stride), dtype=torch.float64)
            else:
                sides = torch.as_tensor(short_sides, dtype=torch.float64).reshape(-1).cpu()
                if sides.numel() != batch:
                    raise ValueError(f"short_sides must hold one value per image ({batch}), got {sides.numel()}")
                if not bool((torch.isfinite(sides) & (sides > 0)).all()):
                    raise ValueError("short_sides must be positive and finite")
            background = (sides * self.background_ratio).to(dens.device)
        expected = _BayesianExpected.apply(dens, packed, offs, self.stride, self.sigma, background)
        return expected[:packed.shape[0]], expected[packed.shape[0]:]

    def forward(self, density: torch.Tensor, points: PointsLike, short_sides=None, *, offsets=None) -> torch.Tensor:
        heads, background = self.expected_counts(density, points, short_sides, offsets=offsets)
        loss = ((1.0 - heads).abs().sum() + background.abs().sum()) / density.shape[0]
        return loss.to(_result_dtype(density))


# ---- DM-Count's optimal transport --------------------------------------------------------------

class _OTLossFunction(torch.autograd.Function):
    """(loss, wasserstein, objective) of DM-Count's OT_Loss for normed and density (B, h, w)."""

    @staticmethod
    def forward(ctx, normed, density, points, offsets, stride, reg, iterations, scale, shift):
        batch = density.shape[0]
        beta = torch.empty(density.shape, dtype=torch.float64, device=density.device)
        wasserstein = torch.empty(batch, dtype=torch.float64, device=density.device)
        _ops._run("sinkhorn", density.device, lambda module: _ops._fill(
            module.SinkhornArgs(), map=_point_map(module, points, offsets, density, stride), reg=reg,
            iterations=iterations, scale=scale, shift=shift, normed=normed.data_ptr(), beta=beta.data_ptr(),
            wasserstein=wasserstein.data_ptr()))
        d = density.to(torch.float64)
        count = d.sum(dim=(1, 2), keepdim=True)
        denom = count * count + 1e-8
        # DM-Count's gradient in density: beta / count - <density, beta> / count^2 (0 without heads: beta = 0).
        grad = count / denom * beta - (d * beta).sum(dim=(1, 2), keepdim=True) / denom
        ctx.save_for_backward(beta, grad)
        loss = (d * grad).sum().to(torch.float32)
        objective = (normed.to(torch.float64) * beta).sum().to(torch.float32)
        distance = wasserstein.sum().to(torch.float32)
        ctx.mark_non_differentiable(distance)
        return loss, distance, objective

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_wasserstein, grad_objective):
        beta, grad = ctx.saved_tensors
        return ((grad_objective * beta).to(torch.float32), (grad_loss * grad).to(torch.float32),
                None, None, None, None, None, None, None)


_MAX_ITERATIONS = 2**31 - 1  # SinkhornArgs.iterations is a C int


class OTLoss(nn.Module):
    """DM-Count's optimal transport loss (Wang et al., NeurIPS 2020) with bounded memory.

    Args:
        stride: input pixels per density cell (a positive integer).
        reg: the entropic regularisation (> 0), in squared cost units.
        iterations: Sinkhorn-Knopp's most iterations (the constraint error is checked every 10,
            stopping below 1e-9).
        normalize_coordinates: map heads and cell centres to [-1, 1] by the crop size h * stride
            before the squared distances (DM-Count's --norm-cood).
        validate: check the points' and ``normed_density``'s values on every call (see the module
            docstring).

    Called as ``criterion(normed_density, density, points, *, offsets=None)`` with both (B, 1, h, w)
    (``normed_density`` = density / its sum per image); returns float32 scalars ``(loss,
    wasserstein, objective)`` summed over the images with heads: ``loss``'s gradient in ``density``
    is DM-Count's beta / count - <density, beta> / count^2 (its value is 0 up to rounding),
    ``objective`` = sum(normed_density * beta) is differentiable in ``normed_density`` (gradient
    beta), ``wasserstein`` = sum(C * P) is not differentiable. Both maps are read in float32 (as
    DM-Count computes), whatever their dtype.
    """

    def __init__(self, stride: int = 8, reg: float = 10.0, iterations: int = 100, normalize_coordinates: bool = False,
                 validate: bool = True):
        super().__init__()
        self.validate = bool(validate)
        self.stride = _check_stride(stride)
        self.reg = _check_positive(reg, "reg")
        if not is_integer(iterations):
            raise TypeError(f"iterations must be an integer, got {iterations!r}")
        if not 1 <= iterations <= _MAX_ITERATIONS:
            raise ValueError(f"iterations must be in [1, {_MAX_ITERATIONS}], got {iterations}")
        self.iterations = int(iterations)
        self.normalize_coordinates = bool(normalize_coordinates)

    def forward(self, normed_density: torch.Tensor, density: torch.Tensor, points: PointsLike, *, offsets=None):
        dens = _check_density(density, "density")
        normed = _check_density(normed_density, "normed_density")
        if normed.shape != dens.shape or normed.device != dens.device:
            raise ValueError(f"normed_density {tuple(normed_density.shape)} on {normed.device} must match density "
                             f"{tuple(density.shape)} on {dens.device}")
        if self.validate and not bool((torch.isfinite(normed) & (normed >= 0)).all()):
            raise ValueError("normed_density must be finite and non-negative (it is a probability mass)")
        packed, offs = _points_for(dens, points, offsets, self.validate)
        crop = dens.shape[1] * self.stride
        scale, shift = (2.0 / crop, -1.0) if self.normalize_coordinates else (1.0, 0.0)
        return _OTLossFunction.apply(normed, dens, packed, offs, self.stride, self.reg, self.iterations, scale, shift)


class DMCountLoss(nn.Module):
    """DM-Count's training loss: ot_weight * OT loss + count loss + tv_weight * TV loss.

    count loss = mean over images of |sum(density) - N|; TV loss = mean over images of
    N * sum |normed_density - count map / (N + 1e-6)| with the heads' stride count map
    (:func:`mud_iknn.count_maps` of the crop, h * stride x w * stride pixels, a head at x <= W
    counted at min(x, W - 1), likewise y, as DM-Count's gen_discrete_map clamps its rounded heads
    into the last pixel) and N the image's number of heads; normed_density = density /
    (sum(density) + 1e-6), as DM-Count's network outputs it; ``density`` must be non-negative
    (DM-Count's Sinkhorn asserts it; ``validate`` checks it with the points). Arguments as
    :class:`OTLoss`, plus the weights (DM-Count's defaults 0.1 and 0.01). A float16 / bfloat16
    density is taken in float32.

    Called as ``criterion(density, points, *, offsets=None)`` with ``density`` (B, 1, h, w); returns
    the scalar loss. ``terms(...)`` returns the dict of its parts.
    """

    def __init__(self, stride: int = 8, reg: float = 10.0, iterations: int = 100, normalize_coordinates: bool = False,
                 ot_weight: float = 0.1, tv_weight: float = 0.01, validate: bool = True):
        super().__init__()
        self.validate = bool(validate)
        # the OT term gets points and a normed density checked here (density / its sum is a mass)
        self.ot = OTLoss(stride, reg, iterations, normalize_coordinates, validate=False)
        self.ot_weight = _check_positive(ot_weight, "ot_weight")
        self.tv_weight = _check_positive(tv_weight, "tv_weight")

    def terms(self, density: torch.Tensor, points: PointsLike, *, offsets=None) -> dict:
        """{"ot", "count", "tv"} (weighted, differentiable), "wasserstein" and "objective" (unweighted)."""
        dens = _check_density(density, "density")
        if self.validate and not bool((torch.isfinite(dens) & (dens >= 0)).all()):
            raise ValueError("density must be finite and non-negative (DM-Count's Sinkhorn takes "
                             "density / its sum as a probability mass)")
        packed, offs = _points_for(dens, points, offsets, self.validate)
        height, width = dens.shape[1:]
        density = density.to(_result_dtype(density))  # float16 rounds N past 2048 and sums coarsely
        normed = density / (density.sum(dim=(1, 2, 3), keepdim=True) + 1e-6)
        ot, wasserstein, objective = self.ot(normed, density, packed, offsets=offs)
        counts = (offs[1:] - offs[:-1]).to(density.dtype)
        count = (density.sum(dim=(1, 2, 3)) - counts).abs().mean()
        stride = self.ot.stride
        crop = torch.tensor([width * stride, height * stride], dtype=packed.dtype, device=packed.device)
        # DM-Count's gen_discrete_map: min(round(x), W - 1), so its crop's heads (0 <= x <= W) past
        # the last pixel's centre land in the last pixel
        inside = torch.where(packed <= crop, torch.minimum(packed, crop - 1), packed)
        target = count_maps(inside, (height * stride, width * stride), stride, offsets=offs).to(density.dtype)
        target = target / (counts[:, None, None] + 1e-6)
        tv = ((normed[:, 0] - target).abs().sum(dim=(1, 2)) * counts).mean()
        return {"ot": self.ot_weight * ot, "count": count, "tv": self.tv_weight * tv,
                "wasserstein": wasserstein, "objective": objective}

    def forward(self, density: torch.Tensor, points: PointsLike, *, offsets=None) -> torch.Tensor:
        parts = self.terms(density, points, offsets=offsets)
        return parts["ot"] + parts["count"] + parts["tv"]
