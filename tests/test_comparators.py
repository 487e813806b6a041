"""The shared comparators of tests/utils.py can fail: a tolerance that passes everything would hide bugs."""
import pytest
import torch
from utils import assert_same_maths


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_same_maths_accepts_reordered_sums_and_rejects_wrong_values(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 257, generator=g)
    want = a.sum(-1).to(dtype)
    reordered = a.flip(-1).cumsum(-1)[:, -1].to(dtype)   # the same sums, the other way round
    assert_same_maths("reordered", reordered, want)
    wrong = want.clone()
    wrong[3] += 0.05 * want.abs().max()
    with pytest.raises(AssertionError, match="wrong: max"):
        assert_same_maths("wrong", wrong, want)
    with pytest.raises(AssertionError, match="shape"):
        assert_same_maths("shape", want[:3], want)
