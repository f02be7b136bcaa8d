"""csrc/labels_cuda.cu on the CPU: built with the host C++ compiler against the CUDA emulator
(tests/cuda_emulation), loaded with ctypes, and put behind the CUDA entry points of
``mud_iknn._ops._C``, whose CUDA branch then serves CPU tensors: the public API runs the CUDA
path, from the Python ops' argument lists to the kernels, on any machine.

This checks the kernels' logic (grid build, tile passes, chunking, scans, barriers) on every
machine; speed and the hardware's memory model still need a GPU (bench/gpu_check.sh).
"""
from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "tests/cuda_emulation/emulated_labels.cpp", ROOT / "tests/cuda_emulation/emulator_selftest.cpp",
           ROOT / "csrc/labels_cuda.cu"]
_ERROR_BYTES = 512


def compiler() -> str | None:
    """The host C++ compiler ($CXX, else g++ or c++ on the PATH), or None."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def build(out_dir: Path) -> ctypes.CDLL:
    """Compiles the emulated CUDA label engine into out_dir and loads it (a few seconds). Extra
    flags from $MUD_IKNN_EMULATION_FLAGS, e.g. the CUDA build's tuning macros
    ("-DMUD_IKNN_CUDA_THREAD_ROWS=2"), check that variant's logic."""
    return load(compile_library(out_dir, ("-O2", *shlex.split(os.environ.get("MUD_IKNN_EMULATION_FLAGS", "")))))


def compile_library(out_dir: Path, flags=("-O2",)) -> Path:
    """out_dir/emulated_labels.so: the emulated CUDA label engine, built with these extra flags."""
    library = out_dir / "emulated_labels.so"
    command = [compiler(), "-std=c++17", *flags, "-shared", "-fPIC", "-fvisibility=hidden",
               "-DMUD_IKNN_CUDA_EMULATION", "-DMUD_IKNN_WITH_CUDA", f"-I{ROOT / 'csrc'}",
               f"-I{ROOT / 'tests/cuda_emulation'}", *map(str, SOURCES[:2]), "-x", "c++", str(SOURCES[2]),
               "-o", str(library)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the emulated CUDA label engine failed:\n{' '.join(command)}\n{done.stderr}")
    return library


def load(library: Path) -> ctypes.CDLL:
    """The built library, with its functions' argument types declared."""
    lib = ctypes.CDLL(str(library))
    ptr, i64, i32, f32, err = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_char_p
    for name in ("emulated_knn_workspace_bytes", "emulated_sigma_workspace_bytes"):
        getattr(lib, name).argtypes = [i64, i64, i64, i64, i32]
        getattr(lib, name).restype = i64
    lib.emulated_knn_maps.argtypes = [ptr, ptr, i64, i64, i64, i64, i32, f32, i32, ptr, ptr, i64, err, i32]
    lib.emulated_head_sigmas.argtypes = [ptr, ptr, i64, i64, i64, i64, i32, f32, ptr, ptr, i64, err, i32]
    lib.emulated_density_workspace_bytes.argtypes = [i64]
    lib.emulated_density_workspace_bytes.restype = i64
    lib.emulated_density_maps.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, f32, ptr, ptr, i64, err, i32]
    lib.emulator_set_schedule.argtypes = [i32]
    lib.emulator_set_schedule.restype = None
    lib.emulator_set_math_error.argtypes = [i32]
    lib.emulator_set_math_error.restype = None
    lib.emulator_fast_math.argtypes = [i32, ptr, ptr]
    lib.emulator_fast_math.restype = None
    lib.emulator_read_behind_a_warp_ahead.argtypes = [ptr, err, i32]
    lib.emulator_read_shared_before_writing.argtypes = [i32, ptr, err, i32]
    lib.emulator_warp_sums.argtypes = [i32, ptr, err, i32]
    lib.emulator_reverse_through_shared.argtypes = [i32, ptr, ptr, err, i32]
    lib.emulator_last_writer_wins.argtypes = [ptr, err, i32]
    lib.emulator_count_blocks.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ptr, err, i32]
    lib.emulator_barrier_in_divergent_code.argtypes = [err, i32]
    lib.emulator_shuffle_with_lanes_missing.argtypes = [err, i32]
    return lib


# The emulator's thread orders between barriers (cuda_emulation.h, Schedule), by name.
SCHEDULES = {"in order": 0, "reversed": 1, "warps ahead": 2, "warps ahead, last first": 3}
# How far the emulated rsqrtf, __fdividef and expf are off (cuda_emulation.h, MathError), by name;
# "scattered" (within 2 ulp, by the arguments' bits) is the default.
MATH_ERRORS = {"exact": 0, "scattered": 1, "high": 2, "low": 3}


def call(function, *args) -> None:
    """function(*args, error buffer, its size); raises RuntimeError with the emulator's message."""
    error = ctypes.create_string_buffer(_ERROR_BYTES)
    if function(*args, error, _ERROR_BYTES) != 0:
        raise RuntimeError(error.value.decode())


def install(lib: ctypes.CDLL, monkeypatch) -> None:
    """For the test (pytest monkeypatch): mud_iknn's ops take their CUDA branch for CPU tensors,
    with the extension's CUDA entry points served by the emulated ones (same arguments, in the
    bindings' order), the workspace allocated on the host and stream 0."""
    import torch

    from mud_iknn import _ops
    run, workspace = _ops._run, _ops._workspace
    monkeypatch.setattr(_ops, "_run", lambda cpu_kernel, cuda_kernel, args, device, workspace_bytes: run(
        cpu_kernel, cuda_kernel, args, torch.device("cuda", 0), workspace_bytes))
    monkeypatch.setattr(_ops, "_require_cuda", lambda: None)
    monkeypatch.setattr(_ops, "_workspace", lambda nbytes, device: workspace(nbytes, torch.device("cpu")))
    monkeypatch.setattr(_ops, "_stream", lambda device: 0)
    entry_points = EmulatedEntryPoints(lib)
    for name in BINDINGS:
        monkeypatch.setattr(_ops._C, name, getattr(entry_points, name))


def _poison(pointer: int, nbytes: int) -> None:
    """Fills an output or workspace with 0xff bytes (NaN floats, -1 ints) first: torch.empty on a GPU
    may hold anything, so every value a kernel reads before writing, or leaves unwritten, shows."""
    ctypes.memset(pointer, 0xFF, nbytes)


class EmulatedEntryPoints:
    """``mud_iknn._C``'s CUDA entry points (the same arguments: pointers as integers, then the
    workspace pointer and size, the stream and the device index) served by the emulated library."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def knn_maps_cuda(self, points, offsets, batch, count, height, width, k, max_distance, transform, out,
                      workspace, workspace_bytes, stream, device):
        _poison(out, batch * height * width * 4)
        _poison(workspace, workspace_bytes)
        call(self.lib.emulated_knn_maps, points, offsets, batch, count, height, width, k, max_distance, transform,
             out, workspace, workspace_bytes)

    def head_sigmas_cuda(self, points, offsets, batch, count, height, width, k, beta, out, workspace,
                         workspace_bytes, stream, device):
        _poison(out, count * 4)
        _poison(workspace, workspace_bytes)
        call(self.lib.emulated_head_sigmas, points, offsets, batch, count, height, width, k, beta, out, workspace,
             workspace_bytes)

    def density_maps_cuda(self, points, offsets, sigmas, batch, count, height, width, truncate, out, workspace,
                          workspace_bytes, stream, device):
        _poison(out, batch * height * width * 4)
        _poison(workspace, workspace_bytes)
        call(self.lib.emulated_density_maps, points, offsets, sigmas, batch, count, height, width, truncate, out,
             workspace, workspace_bytes)

    def knn_workspace_bytes(self, batch, count, height, width, k):
        return self.lib.emulated_knn_workspace_bytes(batch, count, height, width, k)

    def sigma_workspace_bytes(self, batch, count, height, width, k):
        return self.lib.emulated_sigma_workspace_bytes(batch, count, height, width, k)

    def density_workspace_bytes(self, count):
        return self.lib.emulated_density_workspace_bytes(count)


BINDINGS = [name for name in vars(EmulatedEntryPoints) if not name.startswith("_")]
