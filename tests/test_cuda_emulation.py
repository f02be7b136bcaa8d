"""The CUDA emulator behind the "emulated" label-engine backend (tests/emulated_cuda.py): it computes
what the hardware computes for shuffles, barriers and votes, and refuses what the hardware leaves
undefined rather than passing it."""
import numpy as np
import pytest

from emulated_cuda import call


@pytest.mark.parametrize("threads", [32, 96, 256])
def test_warp_shuffles_give_prefix_sums_and_reductions(emulated_cuda_library, threads):
    out = np.zeros(2 * threads, dtype=np.int32)
    call(emulated_cuda_library.emulator_warp_sums, threads, out.ctypes.data)
    values = np.arange(1, threads + 1).reshape(-1, 32)
    np.testing.assert_array_equal(out[:threads], np.cumsum(values, axis=1).ravel())
    np.testing.assert_array_equal(out[threads:][::32], values.sum(axis=1))


@pytest.mark.parametrize("values, all_even, all_small", [
    (np.arange(0, 256, 2), 1, 1),
    (np.r_[np.arange(0, 254, 2), 7], 0, 1),
    (np.r_[5000, np.arange(2, 256, 2)], 1, 0),
])
def test_shared_memory_and_votes_across_a_barrier(emulated_cuda_library, values, all_even, all_small):
    values = values.astype(np.int32)
    out = np.zeros(len(values) + 2, dtype=np.int32)
    call(emulated_cuda_library.emulator_reverse_through_shared, len(values), values.ctypes.data, out.ctypes.data)
    np.testing.assert_array_equal(out[:-2], values[::-1])
    assert (out[-2], out[-1]) == (all_even, all_small)


def test_a_barrier_in_divergent_code_is_an_error(emulated_cuda_library):
    with pytest.raises(RuntimeError, match=r"block \(0, 0, 0\): __syncthreads reached by 40 of 64 threads"):
        call(emulated_cuda_library.emulator_barrier_in_divergent_code)


def test_a_shuffle_missing_lanes_is_an_error(emulated_cuda_library):
    with pytest.raises(RuntimeError, match="warp shuffle reached by 16 of the 32 lanes of warp 0"):
        call(emulated_cuda_library.emulator_shuffle_with_lanes_missing)
