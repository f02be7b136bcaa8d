import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not CUDA:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Every backend of the label engine: the C++ CPU kernels, and CUDA where a GPU is visible."""
    return torch.device(request.param)


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
