"""Test setup: without CUDA, Triton kernels run under the interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton is imported anywhere, hence at conftest import time.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# dtype="auto" on the CPU picks bf16 on CPUs with native bf16 and fp32 elsewhere: pin fp32 so that no test's
# outcome depends on the machine (tests/test_cpu.py covers the choice itself with mocked capabilities).
os.environ["ARC_FAST_CPU_DTYPE"] = "fp32"
# The probe cache of the test run stays out of the user's home.
os.environ.setdefault("ARC_FAST_CACHE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".cache",
                                                         "test-arc-fast"))

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of micro-model tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared 2-core machine their tiny matmuls only make OpenMP threads contend (10x slower, measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
