"""The extension boundary: torch custom ops that hand raw pointers to ``mud_iknn._C``.

Inputs arrive validated by :mod:`mud_iknn.labels` (float32 (P, 2) points, int64 (B + 1) offsets,
contiguous, one device). Registered with torch.library so they work under torch.compile.
"""
from __future__ import annotations

import torch

from . import _C

MAX_K = _C.MAX_K


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    """At least ``nbytes`` of kernel scratch memory from torch's allocator on ``device``."""
    return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)


def _require_cuda() -> None:
    if not _C.WITH_CUDA:
        raise RuntimeError("mud_iknn was built without CUDA: reinstall with nvcc on the PATH "
                           "(MUD_IKNN_CUDA=ON) to run the label engine on CUDA tensors")


def _run(cpu_kernel, cuda_kernel, args: tuple, device: torch.device, workspace_bytes) -> None:
    """Calls ``cpu_kernel(*args, threads)`` or, on a CUDA device, ``cuda_kernel(*args, workspace
    pointer, bytes, stream, device index)``; ``workspace_bytes()`` sizes the kernel's scratch
    memory, allocated by torch on that device."""
    if device.type != "cuda":
        cpu_kernel(*args, _threads())
        return
    _require_cuda()
    workspace = _workspace(workspace_bytes(), device)
    cuda_kernel(*args, workspace.data_ptr(), workspace.numel(), _stream(device), device.index)


def _refuse_overlap(out: torch.Tensor, *inputs: torch.Tensor) -> None:
    """ValueError if the contiguous ``out`` shares memory with one of the kernel's (contiguous) inputs."""
    begin, end = out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()
    for t in inputs:
        if t.numel() and out.numel() and t.data_ptr() < end and begin < t.data_ptr() + t.numel() * t.element_size():
            raise ValueError("out overlaps the memory of an input (points, offsets or sigma)")


def _fill_knn_maps(points, offsets, k, max_distance, transform, out) -> None:
    """Writes every pixel of ``out`` (B, H, W) float32: kNN distance (transform 0), 1/(D+1) (1) or
    1/sqrt(D+1) (2)."""
    batch, height, width = out.shape
    if out.numel() == 0:
        return
    args = (points.data_ptr(), offsets.data_ptr(), batch, points.shape[0], height, width, k, max_distance,
            transform, out.data_ptr())
    _run(_C.knn_maps_cpu, _C.knn_maps_cuda, args, points.device,
         lambda: _C.knn_workspace_bytes(batch, points.shape[0], height, width, k))


@torch.library.custom_op("mud_iknn::knn_maps", mutates_args=())
def knn_maps(points: torch.Tensor, offsets: torch.Tensor, height: int, width: int, k: int,
             max_distance: float, transform: int) -> torch.Tensor:
    """(B, H, W) float32 kNN distance (transform 0), 1/(D+1) (1) or 1/sqrt(D+1) (2) maps."""
    out = torch.empty((offsets.numel() - 1, height, width), dtype=torch.float32, device=points.device)
    _fill_knn_maps(points, offsets, k, max_distance, transform, out)
    return out


@knn_maps.register_fake
def _(points, offsets, height, width, k, max_distance, transform):
    return points.new_empty((offsets.shape[0] - 1, height, width))


@torch.library.custom_op("mud_iknn::knn_maps_out", mutates_args=("out",))
def knn_maps_out(points: torch.Tensor, offsets: torch.Tensor, k: int, max_distance: float, transform: int,
                 out: torch.Tensor) -> None:
    """knn_maps written into ``out`` (B, H, W) float32, contiguous, on the points' device."""
    _refuse_overlap(out, points, offsets)
    _fill_knn_maps(points, offsets, k, max_distance, transform, out)


@torch.library.custom_op("mud_iknn::head_sigmas", mutates_args=())
def head_sigmas(points: torch.Tensor, offsets: torch.Tensor, height: int, width: int, k: int,
                beta: float) -> torch.Tensor:
    """(P,) float32 geometry-adaptive sigmas (beta * mean distance to the k nearest other heads)."""
    batch, count = offsets.numel() - 1, points.shape[0]
    out = torch.empty((count,), dtype=torch.float32, device=points.device)
    if count == 0:
        return out
    args = (points.data_ptr(), offsets.data_ptr(), batch, count, height, width, k, beta, out.data_ptr())
    _run(_C.head_sigmas_cpu, _C.head_sigmas_cuda, args, points.device,
         lambda: _C.sigma_workspace_bytes(batch, count, height, width, k))
    return out


@head_sigmas.register_fake
def _(points, offsets, height, width, k, beta):
    return points.new_empty((points.shape[0],))


def _fill_density_maps(points, offsets, sigmas, truncate, out) -> None:
    """Writes every pixel of ``out`` (B, H, W) float32: the sum of per-head discrete Gaussians."""
    batch, height, width = out.shape
    count = points.shape[0]
    if out.numel() == 0:
        return
    if count == 0:
        out.zero_()
        return
    args = (points.data_ptr(), offsets.data_ptr(), sigmas.data_ptr(), batch, count, height, width,
            truncate, out.data_ptr())
    _run(_C.density_maps_cpu, _C.density_maps_cuda, args, points.device,
         lambda: _C.density_workspace_bytes(count))


@torch.library.custom_op("mud_iknn::density_maps", mutates_args=())
def density_maps(points: torch.Tensor, offsets: torch.Tensor, sigmas: torch.Tensor, height: int,
                 width: int, truncate: float) -> torch.Tensor:
    """(B, H, W) float32 sums of per-head discrete Gaussians of width ``sigmas`` (P,)."""
    out = torch.empty((offsets.numel() - 1, height, width), dtype=torch.float32, device=points.device)
    _fill_density_maps(points, offsets, sigmas, truncate, out)
    return out


@density_maps.register_fake
def _(points, offsets, sigmas, height, width, truncate):
    return points.new_empty((offsets.shape[0] - 1, height, width))


@torch.library.custom_op("mud_iknn::density_maps_out", mutates_args=("out",))
def density_maps_out(points: torch.Tensor, offsets: torch.Tensor, sigmas: torch.Tensor, truncate: float,
                     out: torch.Tensor) -> None:
    """density_maps written into ``out`` (B, H, W) float32, contiguous, on the points' device."""
    _refuse_overlap(out, points, offsets, sigmas)
    _fill_density_maps(points, offsets, sigmas, truncate, out)


def backend_info() -> dict:
    """CUDA compiled in or not, its architectures, and the CUDA devices torch sees."""
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"cuda_compiled": bool(_C.WITH_CUDA), "cuda_architectures": list(_C.CUDA_ARCHS),
            "cuda_devices": devices, "max_k": MAX_K}
