"""CUDA-only behaviour of the label engine: agreement with the C++ kernel at scale, the current
stream, no host synchronisation, device placement. Skipped where no GPU is visible."""
import pytest
import torch

import mud_iknn
from mud_iknn.benchmark import CASES

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("name, k", [("crop512_n300_b32", 3), ("img2048_n5000", 1), ("img2048_n5000", 3),
                                     ("img2048_n5000", 8), ("img1024x768_n500", 16)])
def test_cuda_matches_cpu_kernel_on_benchmark_cases(name, k):
    case = CASES[name]
    cp, co = case.packed("cpu", seed=1)
    gp, go = case.packed("cuda", seed=1)
    cpu = mud_iknn.knn_distance_maps(cp, case.size, k, offsets=co)
    gpu = mud_iknn.knn_distance_maps(gp, case.size, k, offsets=go).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-5)
    dens_cpu = mud_iknn.density_maps(cp, case.size, offsets=co)
    dens_gpu = mud_iknn.density_maps(gp, case.size, offsets=go).cpu()
    torch.testing.assert_close(dens_gpu, dens_cpu, rtol=0, atol=1e-5 * float(dens_cpu.max()))


def test_unvalidated_calls_never_synchronise_with_the_host():
    g = torch.Generator().manual_seed(0)
    p = (torch.rand(900, 2, generator=g) * 256).cuda()
    o = torch.tensor([0, 300, 600, 900]).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mud_iknn.iknn_maps(p, (256, 256), 3, offsets=o, validate=False)
        mud_iknn.iknn_maps(p, (256, 256), 3, validate=False)  # offsets made by the library
        mud_iknn.iknn_maps([p[:300], p[300:]], (256, 256), 3, validate=False)
        mud_iknn.density_maps(p, (256, 256), offsets=o, validate=False)
        mud_iknn.density_maps(p, (256, 256), 4.0, offsets=o, validate=False)
        out = torch.empty(3, 256, 256, device="cuda")
        mud_iknn.iknn_maps(p, (256, 256), 3, offsets=o, validate=False, out=out)
        mud_iknn.density_maps(p, (256, 256), offsets=o, validate=False, out=out)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_runs_on_the_current_stream_and_the_points_device():
    p = torch.tensor([[3.0, 4.0], [10.0, 1.0]], device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        big = torch.rand(4096, 4096, device="cuda") @ torch.rand(4096, 4096, device="cuda")  # keeps it busy
        p2 = p * 1.0
        m = mud_iknn.iknn_maps(p2, (8, 12), 2)
    stream.synchronize()
    del big
    assert m.device == p.device
    torch.testing.assert_close(m.cpu(), mud_iknn.iknn_maps(p.cpu(), (8, 12), 2))


def test_mixed_devices_are_refused():
    with pytest.raises(ValueError, match="offsets is on cpu"):
        mud_iknn.iknn_maps(torch.zeros(2, 2, device="cuda"), (4, 4), offsets=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="one device"):
        mud_iknn.iknn_maps([torch.zeros(1, 2), torch.zeros(1, 2, device="cuda")], (4, 4))
    with pytest.raises(ValueError, match="sigma is on cpu"):
        mud_iknn.density_maps(torch.zeros(2, 2, device="cuda"), (4, 4), sigma=torch.ones(2))
