"""csrc/labels_cuda.cu and csrc/point_losses_cuda.cu on the CPU: built with the host C++ compiler
against the CUDA emulator (tests/cuda_emulation) as a Python module ``emulated_labels_<hash>`` (the
argument structs and CUDA entry points of ``mud_iknn._C``, bound by the same code), and plugged into
mud_iknn as a backend object (:class:`EmulatedBackend`, ``mud_iknn._ops.BACKENDS``): the public API
(label maps and point losses) then runs the CUDA path, from the ops' argument structs to the
kernels, for CPU tensors on any machine.

This checks the kernels' logic (grid build, tile passes, chunking, scans, barriers) on every
machine; speed and the hardware's memory model still need a GPU (bench/gpu_check.sh,
bench/gpu_point_losses.py).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "tests/cuda_emulation/emulated_labels.cpp", ROOT / "tests/cuda_emulation/emulator_selftest.cpp",
           ROOT / "csrc/labels_cuda.cu", ROOT / "csrc/point_losses_cuda.cu"]
_ERROR_BYTES = 512
MODULE = "emulated_labels"


def compiler() -> str | None:
    """The host C++ compiler ($CXX, else g++ or c++ on the PATH), or None."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def build(out_dir: Path) -> ctypes.CDLL:
    """Compiles the emulated CUDA kernels into out_dir and loads it (a few seconds). Extra
    flags from $MUD_IKNN_EMULATION_FLAGS, e.g. the CUDA build's tuning macros
    ("-DMUD_IKNN_CUDA_THREAD_ROWS=2"), check that variant's logic."""
    return load(compile_library(out_dir, ("-O2", *shlex.split(os.environ.get("MUD_IKNN_EMULATION_FLAGS", "")))))


def compile_library(out_dir: Path, flags=("-O2",)) -> Path:
    """out_dir/emulated_labels<ext>: the emulated CUDA kernels (label engine and point losses), a
    Python extension module built with these extra flags."""
    import pybind11

    # a module name per set of flags: Python keeps the first module loaded under a name
    name = f"{MODULE}_{hashlib.sha1(' '.join(flags).encode()).hexdigest()[:12]}"
    library = out_dir / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
    command = [compiler(), "-std=c++17", *flags, "-shared", "-fPIC", "-fvisibility=hidden",
               f"-DMUD_IKNN_EMULATED_MODULE={name}", "-DMUD_IKNN_CUDA_EMULATION", "-DMUD_IKNN_WITH_CUDA",
               f"-I{ROOT / 'csrc'}",
               f"-I{ROOT / 'tests/cuda_emulation'}", f"-I{pybind11.get_include()}",
               f"-I{sysconfig.get_paths()['include']}", *map(str, SOURCES[:2]), "-x", "c++", *map(str, SOURCES[2:]),
               "-o", str(library)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the emulated CUDA kernels failed:\n{' '.join(command)}\n{done.stderr}")
    return library


def load(library: Path) -> ctypes.CDLL:
    """The built library: its emulator controls and self-tests through ctypes (argument types
    declared), and as ``.module`` the Python module of its kernels."""
    spec = importlib.util.spec_from_file_location(library.name.split(".")[0], library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lib = ctypes.CDLL(str(library))  # the same loaded library: one emulator state
    lib.module = module
    ptr, i32, err = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
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
    """For the test (pytest monkeypatch): mud_iknn's ops on CPU tensors run on the emulated CUDA
    backend (:func:`backend`) until the test ends."""
    from mud_iknn import _ops

    monkeypatch.setitem(_ops.BACKENDS, "cpu", backend(lib.module))


def _poison(pointer: int, nbytes: int) -> None:
    """Fills an output or workspace with 0xff bytes (NaN floats, -1 ints) first: torch.empty on a GPU
    may hold anything, so every value a kernel reads before writing, or leaves unwritten, shows."""
    if nbytes > 0:
        ctypes.memset(pointer, 0xFF, nbytes)


def outputs(op: str, args) -> list[tuple[int, int]]:
    """(address, bytes) of each output of ``op`` for its argument struct ``args`` (csrc/labels.h,
    csrc/point_losses.h)."""
    if op in POINT_LOSS_OPS:
        m = args.map
        p, cells = m.points, m.points.batch * m.height * m.width
        if op == "bayesian_expected":
            return [(args.expected, 8 * (p.count + p.batch))]
        if op == "bayesian_backward":
            return [(args.grad, 4 * cells)]
        return [(args.beta, 8 * cells), (args.wasserstein, 8 * p.batch)]
    p = args.points
    if op == "head_sigmas":
        return [(args.out, 4 * p.count)]
    if op == "count_maps":
        return [(args.out, 4 * p.batch * (-(-args.height // args.stride)) * (-(-args.width // args.stride)))]
    return [(args.out, 4 * p.batch * args.height * args.width)]


def backend(module):
    """A backend object for ``mud_iknn._ops.BACKENDS``: mud_iknn's CUDA branch (``CudaBackend``: the
    op's workspace size, a CudaCall, ``<op>_cuda``) served by the emulated ``module`` for CPU
    tensors, with the workspace on the host, stream 0, device 0 (no device to make current), and
    output and workspace poisoned."""
    import torch

    from mud_iknn import _ops

    class EmulatedBackend(_ops.CudaBackend):
        def run(self, op, args, device):
            for pointer, nbytes in outputs(op, args):
                _poison(pointer, nbytes)
            super().run(op, args, device)

        def workspace(self, nbytes, device):
            workspace = super().workspace(nbytes, torch.device("cpu"))
            _poison(workspace.data_ptr(), workspace.numel())
            return workspace

        def device_guard(self, device):
            return contextlib.nullcontext()

        def stream(self, device):
            return 0

        def device_index(self, device):
            return 0

    return EmulatedBackend(module)


#: the point losses' ops (csrc/point_losses.h)
POINT_LOSS_OPS = ["bayesian_expected", "bayesian_backward", "sinkhorn"]
#: the ops the emulated module serves (as mud_iknn._C's CUDA entry points)
BINDINGS = ["knn_maps", "head_sigmas", "density_maps", "count_maps", *POINT_LOSS_OPS]
