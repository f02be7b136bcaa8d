"""The extension boundary: torch custom ops that hand argument structs to a backend's kernels.

One schema per op (the ``torch.library`` ops below, usable under torch.compile) and one
implementation per backend: :data:`BACKENDS` maps a device type to the :class:`Backend` that runs
it (the C++ kernels for "cpu", the CUDA kernels for "cuda"; a test may put another backend object
there, e.g. the CUDA kernels built on the CPU emulator). Each kernel takes one struct declared in
csrc/labels.h and bound in csrc/label_bindings.h, filled here field by field; the point losses
(:mod:`mud_iknn.point_losses`, csrc/point_losses.h) run through the same backends.

Inputs arrive validated by :mod:`mud_iknn.labels` (float32 (P, 2) points, int64 (B + 1) offsets,
contiguous, one device).
"""
from __future__ import annotations

import torch

from . import _C

MAX_K = _C.MAX_K
TRANSFORMS = dict(_C.TRANSFORMS)  # transform name -> the kernels' code


def _fill(struct, **fields):
    """``struct`` with the given fields set (an unknown name raises AttributeError)."""
    for name, value in fields.items():
        setattr(struct, name, value)
    return struct


class Backend:
    """The kernels of ``module`` (mud_iknn._C or a stand-in) run on the CPU: ``run(op, args, device)``
    calls ``module.<op>_cpu(args, torch.get_num_threads())``. ``module`` also provides the argument
    structs the ops fill."""

    def __init__(self, module):
        self.module = module

    def run(self, op: str, args, device: torch.device) -> None:
        getattr(self.module, f"{op}_cpu")(args, max(1, torch.get_num_threads()))


class CudaBackend(Backend):
    """The CUDA kernels of ``module``: ``module.<op>_cuda(args, CudaCall)`` on the current stream of
    the points' device, with the scratch memory ``module.<op>_workspace_bytes(args)`` asks for
    allocated by torch there."""

    def run(self, op: str, args, device: torch.device) -> None:
        if not self.module.WITH_CUDA:
            raise RuntimeError("mud_iknn was built without CUDA: reinstall with nvcc on the PATH "
                               "(MUD_IKNN_CUDA=ON) to run its kernels on CUDA tensors")
        with self.device_guard(device):  # CUB's workspace-size query runs on the current device
            workspace = self.workspace(getattr(self.module, f"{op}_workspace_bytes")(args), device)
            call = _fill(self.module.CudaCall(), workspace=workspace.data_ptr(), workspace_bytes=workspace.numel(),
                         stream=self.stream(device), device=self.device_index(device))
            getattr(self.module, f"{op}_cuda")(args, call)

    def device_guard(self, device: torch.device):
        """A context in which ``device`` is the current CUDA device."""
        return torch.cuda.device(device)

    def workspace(self, nbytes: int, device: torch.device) -> torch.Tensor:
        """At least ``nbytes`` of kernel scratch memory on ``device``."""
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)

    def stream(self, device: torch.device) -> int:
        return torch.cuda.current_stream(device).cuda_stream

    def device_index(self, device: torch.device) -> int:
        return device.index


#: device type -> the backend that runs the ops on it
BACKENDS: dict[str, Backend] = {"cpu": Backend(_C), "cuda": CudaBackend(_C)}


def _run(op: str, device: torch.device, make_args) -> None:
    """``make_args(module)`` -> the op's argument struct, run by the device's backend."""
    backend = BACKENDS[device.type]
    backend.run(op, make_args(backend.module), device)


def _points(module, points: torch.Tensor, offsets: torch.Tensor):
    return _fill(module.PackedPoints(), xy=points.data_ptr(), offsets=offsets.data_ptr(),
                 batch=offsets.numel() - 1, count=points.shape[0])


def float2_aligned(points: torch.Tensor) -> torch.Tensor:
    """``points`` (P, 2) float32, or a copy when its memory starts 4 bytes off an 8-byte boundary (a
    view into a flat buffer): the CUDA kernels read a head as one 8-byte float2."""
    return points if points.data_ptr() % 8 == 0 else points.clone()


def _refuse_overlap(out: torch.Tensor, *inputs: torch.Tensor) -> None:
    """ValueError if the contiguous ``out`` shares memory with one of the kernel's (contiguous) inputs."""
    begin, end = out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()
    for t in inputs:
        if t.numel() and out.numel() and t.data_ptr() < end and begin < t.data_ptr() + t.numel() * t.element_size():
            raise ValueError("out overlaps the memory of an input (points, offsets or sigma)")


def _fill_knn_maps(points, offsets, k, max_distance, transform, params, out) -> None:
    """Writes every pixel of ``out`` (B, H, W) float32: the transform (a TRANSFORMS code; ``params``
    FIDT's (alpha, beta, c, zero_below)) of the mean distance to the k nearest heads."""
    _, height, width = out.shape
    if out.numel() == 0:
        return
    alpha, beta, c, zero_below = params

    def args(module):
        kind = _fill(module.MapTransform(), kind=transform, alpha=alpha, beta=beta, c=c, zero_below=zero_below)
        return _fill(module.KnnArgs(), points=_points(module, points, offsets), height=height, width=width, k=k,
                     max_distance=max_distance, transform=kind, out=out.data_ptr())

    _run("knn_maps", points.device, args)


_LIBRARY = torch.library.Library("mud_iknn", "DEF")


def _op(schema: str, fake=None):
    """Defines ``mud_iknn::<schema>`` implemented by the decorated function on CPU and CUDA tensors
    (it hands the work to BACKENDS itself; its points arrive float2-aligned), with ``fake`` as its
    shape function under torch.compile (an op that only writes its ``out`` needs none). Plain
    ``torch.library`` definitions rather than ``torch.library.custom_op``, whose Python autograd
    layer runs on every call (its cost: bench/RESULTS.md, session 14) for ops that have no gradient
    to give."""
    def define(fn):
        name = schema.split("(")[0]
        _LIBRARY.define(schema)

        def impl(points, *args):  # every op's first argument is its (P, 2) points
            return fn(float2_aligned(points), *args)

        for key in ("CPU", "CUDA"):
            _LIBRARY.impl(name, impl, key)
        if fake is not None:
            torch.library.register_fake(f"mud_iknn::{name}", fake, lib=_LIBRARY)
        return fn
    return define


def _maps_shape(offsets, height, width):
    """(B, H, W) of the maps of the images that ``offsets`` (B + 1) delimit."""
    return offsets.shape[0] - 1, height, width


def _knn_fake(points, offsets, height, width, k, max_distance, transform, params):
    return points.new_empty(_maps_shape(offsets, height, width))


@_op("knn_maps(Tensor points, Tensor offsets, int height, int width, int k, float max_distance, int transform, "
     "float[] params) -> Tensor", fake=_knn_fake)
def knn_maps(points, offsets, height, width, k, max_distance, transform, params):
    """(B, H, W) float32 maps: a transform (TRANSFORMS) of the mean distance to the k nearest heads;
    ``params`` (alpha, beta, c, zero_below) are FIDT's (ignored by the others)."""
    out = torch.empty(_maps_shape(offsets, height, width), dtype=torch.float32, device=points.device)
    _fill_knn_maps(points, offsets, k, max_distance, transform, params, out)
    return out


@_op("knn_maps_out(Tensor points, Tensor offsets, int k, float max_distance, int transform, float[] params, "
     "Tensor(a!) out) -> ()")
def knn_maps_out(points, offsets, k, max_distance, transform, params, out):
    """knn_maps written into ``out`` (B, H, W) float32, contiguous, on the points' device."""
    _refuse_overlap(out, points, offsets)
    _fill_knn_maps(points, offsets, k, max_distance, transform, params, out)


def _sigma_fake(points, offsets, height, width, k, beta):
    return points.new_empty((points.shape[0],))


@_op("head_sigmas(Tensor points, Tensor offsets, int height, int width, int k, float beta) -> Tensor",
     fake=_sigma_fake)
def head_sigmas(points, offsets, height, width, k, beta):
    """(P,) float32 geometry-adaptive sigmas (beta * mean distance to the k nearest other heads)."""
    out = torch.empty((points.shape[0],), dtype=torch.float32, device=points.device)
    if out.numel():
        _run("head_sigmas", points.device, lambda module: _fill(
            module.SigmaArgs(), points=_points(module, points, offsets), height=height, width=width, k=k, beta=beta,
            out=out.data_ptr()))
    return out


def _fill_density_maps(points, offsets, sigmas, truncate, out) -> None:
    """Writes every pixel of ``out`` (B, H, W) float32: the sum of per-head discrete Gaussians."""
    _, height, width = out.shape
    if out.numel() == 0:
        return
    if points.shape[0] == 0:
        out.zero_()
        return
    _run("density_maps", points.device, lambda module: _fill(
        module.DensityArgs(), points=_points(module, points, offsets), sigmas=sigmas.data_ptr(), height=height,
        width=width, truncate=truncate, out=out.data_ptr()))


def _density_fake(points, offsets, sigmas, height, width, truncate):
    return points.new_empty(_maps_shape(offsets, height, width))


@_op("density_maps(Tensor points, Tensor offsets, Tensor sigmas, int height, int width, float truncate) -> Tensor",
     fake=_density_fake)
def density_maps(points, offsets, sigmas, height, width, truncate):
    """(B, H, W) float32 sums of per-head discrete Gaussians of width ``sigmas`` (P,)."""
    out = torch.empty(_maps_shape(offsets, height, width), dtype=torch.float32, device=points.device)
    _fill_density_maps(points, offsets, sigmas, truncate, out)
    return out


@_op("density_maps_out(Tensor points, Tensor offsets, Tensor sigmas, float truncate, Tensor(a!) out) -> ()")
def density_maps_out(points, offsets, sigmas, truncate, out):
    """density_maps written into ``out`` (B, H, W) float32, contiguous, on the points' device."""
    _refuse_overlap(out, points, offsets, sigmas)
    _fill_density_maps(points, offsets, sigmas, truncate, out)


def _fill_count_maps(points, offsets, height, width, stride, out) -> None:
    """Writes every cell of ``out`` (B, ceil(H / s), ceil(W / s)) float32: heads per cell."""
    if out.numel() == 0:
        return
    _run("count_maps", points.device, lambda module: _fill(
        module.CountArgs(), points=_points(module, points, offsets), height=height, width=width, stride=stride,
        out=out.data_ptr()))


def _count_shape(offsets, height, width, stride):
    return offsets.shape[0] - 1, -(-height // stride), -(-width // stride)


def _count_fake(points, offsets, height, width, stride):
    return points.new_empty(_count_shape(offsets, height, width, stride))


@_op("count_maps(Tensor points, Tensor offsets, int height, int width, int stride) -> Tensor", fake=_count_fake)
def count_maps(points, offsets, height, width, stride):
    """(B, ceil(H / s), ceil(W / s)) float32 heads per stride x stride cell of an (H, W) map."""
    out = torch.empty(_count_shape(offsets, height, width, stride), dtype=torch.float32, device=points.device)
    _fill_count_maps(points, offsets, height, width, stride, out)
    return out


@_op("count_maps_out(Tensor points, Tensor offsets, int height, int width, int stride, Tensor(a!) out) -> ()")
def count_maps_out(points, offsets, height, width, stride, out):
    """count_maps written into ``out`` (B, ceil(H / s), ceil(W / s)) float32, contiguous."""
    _refuse_overlap(out, points, offsets)
    _fill_count_maps(points, offsets, height, width, stride, out)


def knn_workspace_bytes(batch: int, count: int, height: int, width: int, k: int) -> int:
    """Bytes of CUDA workspace a kNN map call of these sizes allocates (what the benchmarks report)."""
    args = _fill(_C.KnnArgs(), points=_fill(_C.PackedPoints(), batch=batch, count=count), height=height, width=width,
                 k=k)
    return _C.knn_maps_workspace_bytes(args)


def backend_info() -> dict:
    """CUDA compiled in or not, its architectures, and the CUDA devices torch sees."""
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"cuda_compiled": bool(_C.WITH_CUDA), "cuda_architectures": list(_C.CUDA_ARCHS),
            "cuda_devices": devices, "max_k": MAX_K}
