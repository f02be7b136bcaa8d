"""csrc/point_losses_cuda.cu on the CPU: built with the host C++ compiler against the CUDA emulator
(tests/cuda_emulation), loaded with ctypes, and put behind mud_iknn.point_losses' CUDA branch, which
then serves CPU tensors: the losses' CUDA path, from the Python argument lists to the kernels, runs
on any machine. Speed and the hardware's memory model still need a GPU (bench/gpu_point_losses.py).
"""
from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

from emulated_cuda import call, compiler  # noqa: F401  (compiler: re-exported for the tests' skip)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "tests/cuda_emulation/emulated_point_losses.cpp", ROOT / "tests/cuda_emulation/emulator_selftest.cpp",
           ROOT / "csrc/point_losses_cuda.cu"]


def build(out_dir: Path) -> ctypes.CDLL:
    """Compiles the emulated CUDA point losses into out_dir and loads them (a few seconds)."""
    library = out_dir / "emulated_point_losses.so"
    command = [compiler(), "-std=c++17", "-O2", "-shared", "-fPIC", "-fvisibility=hidden",
               "-DMUD_IKNN_CUDA_EMULATION", "-DMUD_IKNN_WITH_CUDA", f"-I{ROOT / 'csrc'}",
               f"-I{ROOT / 'tests/cuda_emulation'}", *map(str, SOURCES[:2]), "-x", "c++", str(SOURCES[2]),
               "-o", str(library)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the emulated CUDA point losses failed:\n{' '.join(command)}\n{done.stderr}")
    lib = ctypes.CDLL(str(library))
    ptr, i64, i32, f64, err = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_char_p
    lib.emulated_bayesian_workspace_bytes.argtypes = [i64, i64, i64, i64, i32, i32]
    lib.emulated_bayesian_workspace_bytes.restype = i64
    for name in ("emulated_bayesian_expected", "emulated_bayesian_backward"):
        getattr(lib, name).argtypes = [ptr, ptr, i64, i64, i64, i64, i32, f64, ptr, ptr, ptr, ptr, i64, err, i32]
    lib.emulator_set_schedule.argtypes = [i32]
    lib.emulator_set_schedule.restype = None
    lib.emulated_sinkhorn_workspace_bytes.argtypes = [i64, i64, i64, i64, i32, f64, f64]
    lib.emulated_sinkhorn_workspace_bytes.restype = i64
    lib.emulated_sinkhorn.argtypes = [ptr, ptr, i64, i64, i64, i64, i32, f64, i32, f64, f64, ptr, ptr, ptr, ptr,
                                      i64, err, i32]
    return lib


def _poison(pointer: int, nbytes: int) -> None:
    """0xff bytes (NaN) in an output or workspace first: whatever a kernel leaves unwritten shows."""
    ctypes.memset(pointer, 0xFF, nbytes)


class EmulatedEntryPoints:
    """mud_iknn._C's point-loss CUDA entry points (same arguments) served by the emulated library."""

    WITH_CUDA = True

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def bayesian_workspace_bytes(self, batch, count, height, width, stride, background):
        return self.lib.emulated_bayesian_workspace_bytes(batch, count, height, width, stride, int(background))

    def bayesian_expected_cuda(self, points, offsets, batch, count, height, width, stride, sigma, background,
                               density, expected, workspace, workspace_bytes, stream, device):
        _poison(expected, (count + batch) * 8)
        _poison(workspace, workspace_bytes)
        call(self.lib.emulated_bayesian_expected, points, offsets, batch, count, height, width, stride, sigma,
             background or None, density, expected, workspace, workspace_bytes)

    def bayesian_backward_cuda(self, points, offsets, batch, count, height, width, stride, sigma, background,
                               weights, grad, workspace, workspace_bytes, stream, device):
        _poison(grad, batch * height * width * 4)
        call(self.lib.emulated_bayesian_backward, points, offsets, batch, count, height, width, stride, sigma,
             background or None, weights, grad, workspace, workspace_bytes)

    def sinkhorn_workspace_bytes(self, batch, count, height, width, stride, reg, scale):
        return self.lib.emulated_sinkhorn_workspace_bytes(batch, count, height, width, stride, reg, scale)

    def sinkhorn_cuda(self, points, offsets, batch, count, height, width, stride, reg, iterations, scale, shift,
                      normed, beta, wasserstein, workspace, workspace_bytes, stream, device):
        _poison(beta, batch * height * width * 8)
        _poison(wasserstein, batch * 8)
        _poison(workspace, workspace_bytes)
        call(self.lib.emulated_sinkhorn, points, offsets, batch, count, height, width, stride, reg, iterations,
             scale, shift, normed, beta, wasserstein, workspace, workspace_bytes)


def install(lib: ctypes.CDLL, monkeypatch) -> None:
    """For the test (pytest monkeypatch): mud_iknn.point_losses takes its CUDA branch for CPU tensors,
    its extension's CUDA entry points served by the emulated ones, workspace on the host, stream 0."""
    import torch

    from mud_iknn import point_losses
    monkeypatch.setattr(point_losses, "_uses_cuda", lambda device: True)
    monkeypatch.setattr(point_losses, "_C", EmulatedEntryPoints(lib))
    monkeypatch.setattr(point_losses, "_stream", lambda device: 0)
    monkeypatch.setattr(point_losses, "_workspace",
                        lambda nbytes, device: torch.empty(max(nbytes, 1), dtype=torch.uint8))
