"""CUDA tests (`-m cuda`): the bf16 autocast, channels_last and CUDA resume paths that CI never runs.

Every test takes the `device` fixture: CUDA device 0 when there is one; without one the test is
skipped, unless BONESCAN_CUDA_TESTS_ON_CPU=1, which runs the same tests on the CPU at tiny sizes
(`benchmarks/gpu.sh --tiny` does) so the tests themselves are checked before GPU time is spent.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_CPU_ENV = "BONESCAN_CUDA_TESTS_ON_CPU"
# cuBLAS is deterministic only with a fixed workspace; it reads this when its first handle is made.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if os.environ.get(ON_CPU_ENV) == "1":
        return torch.device("cpu")
    pytest.skip(f"needs a CUDA device ({ON_CPU_ENV}=1 runs it on the CPU)")


@pytest.fixture
def on_gpu(device: torch.device) -> bool:
    """True on CUDA: full sizes; False on the CPU stand-in: tiny sizes, one thread."""
    return device.type == "cuda"


@pytest.fixture(autouse=True)
def one_cpu_thread(request):
    """On the shared 2-core CPU one intra-op thread is much faster than two fighting other jobs."""
    if "device" not in request.fixturenames or torch.cuda.is_available():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def deterministic():
    """Deterministic kernels where torch has them (warn, not fail, where it has none)."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    torch.backends.cudnn.benchmark = benchmark
