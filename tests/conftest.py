import numpy as np
import pytest
import torch

import emulated_cuda

CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not CUDA:
            item.add_marker(skip)


def require_host_compiler() -> None:
    """Skips the test where no host C++ compiler can build the emulated CUDA kernels."""
    if emulated_cuda.compiler() is None:
        pytest.skip("no host C++ compiler (g++, c++ or $CXX) to build the emulated CUDA kernels")


@pytest.fixture(scope="session")
def emulated_cuda_library(tmp_path_factory):
    """The CUDA label engine's source built on the CUDA emulator (tests/emulated_cuda.py)."""
    require_host_compiler()
    return emulated_cuda.build(tmp_path_factory.mktemp("emulated_cuda"))


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda), "emulated", "emulated-warps-ahead"])
def device(request, monkeypatch):
    """Every backend of the label engine: the C++ CPU kernels, CUDA where a GPU is visible, and
    "emulated": mud_iknn's CUDA path with the CUDA kernels' code run on the CPU emulator
    (emulated_cuda.install; the tests then see CPU tensors), its threads in order or, as
    "emulated-warps-ahead", each warp running ahead of the next as far as its barriers let it."""
    if not request.param.startswith("emulated"):
        return torch.device(request.param)
    library = request.getfixturevalue("emulated_cuda_library")
    emulated_cuda.install(library, monkeypatch)
    if request.param == "emulated-warps-ahead":
        library.emulator_set_schedule(emulated_cuda.SCHEDULES["warps ahead"])
        request.addfinalizer(lambda: library.emulator_set_schedule(emulated_cuda.SCHEDULES["in order"]))
    return torch.device("cpu")


def clustered_points(rng, count, height, width, clusters=8, spread=0.08, outside=0.1):
    """(count, 2) float32 heads in Gaussian clusters, a fraction `outside` scattered past the border."""
    centres = rng.uniform([0, 0], [width, height], size=(clusters, 2))
    scale = spread * np.array([width, height])
    pts = centres[rng.integers(0, clusters, count)] + rng.normal(0, 1, (count, 2)) * scale
    n_out = int(outside * count)
    pts[:n_out] = rng.uniform([-0.3 * width, -0.3 * height], [1.3 * width, 1.3 * height], size=(n_out, 2))
    return pts.astype(np.float32)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (the shared CI cores), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
