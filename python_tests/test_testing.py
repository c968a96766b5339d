"""rkd_ext.testing: the batches are what their kinds promise, and the comparisons can fail."""
import pytest
import torch
from conftest import DEVICES

from rkd_ext.testing import DTYPES, assert_close, make_features, max_rel_err


@pytest.mark.parametrize("n", [1, 6, 7])
def test_feature_kinds(n):
    plain = make_features(n, 5, seed=3)
    assert torch.equal(make_features(n, 5, seed=3, kind="offset"), plain + 100.0)
    dup = make_features(n, 5, seed=3, kind="dup")
    assert torch.equal(dup[: n // 2], plain[: n // 2])
    assert torch.equal(dup[n // 2:], plain[: n - n // 2])
    if n > 1:
        assert torch.equal(dup[n // 2], dup[0])
    near = make_features(n, 5, seed=3, kind="near")
    half = (n + 1) // 2
    assert torch.equal(near[:half], plain[:half])
    gap = (near[half:] - near[: n - half]).abs()
    assert bool((gap > 0).all()) and bool((gap < 1e-2).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_features_are_one_draw_cast(device, dtype):
    """Every device and dtype gets the float64 draw, rounded once."""
    x = make_features(9, 4, dtype=dtype, device=device, seed=5, kind="near", requires_grad=True)
    assert x.dtype == dtype and x.device.type == device and x.requires_grad and x.is_leaf
    assert torch.equal(x.detach().cpu(), make_features(9, 4, seed=5, kind="near").to(dtype))


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="kind must be one of random, offset, near, dup, got 'uniform'"):
        make_features(4, 3, kind="uniform")


def test_assert_close_names_the_worst_element():
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert_close(expected + 1e-7, expected, 1e-6, 0.0, "within")
    with pytest.raises(AssertionError, match=r"worst element 2: 3\.5 vs 3\.0"):
        assert_close(torch.tensor([1.0, 2.1, 3.5, 4.0]), expected, 1e-3, 0.0, "off")
    with pytest.raises(AssertionError, match="shape"):
        assert_close(expected[:3], expected, 1.0, 1.0, "shape")


def test_max_rel_err():
    assert max_rel_err(torch.tensor([1.0, -2.0, 3.5]), torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)) == 0.125
    assert max_rel_err(torch.zeros(3), torch.zeros(3)) == 0.0
