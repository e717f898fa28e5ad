"""Bad input gets a ValueError that says what was wrong and what to do."""

import pytest
import torch

import sae_minimal as sm


@pytest.fixture
def sae():
    return sm.TopKSAE(16, 64, k=4)


def test_wrong_d_in(sae):
    with pytest.raises(ValueError, match=r"shape \(10, 12\).*d_in=16"):
        sae(torch.randn(10, 12))


def test_k_larger_than_d_sae():
    with pytest.raises(ValueError, match="k=100 is larger than d_sae=64"):
        sm.TopKSAE(16, 64, k=100)
    with pytest.raises(ValueError, match="k=65 is larger than d_sae=64"):
        sm.BatchTopKSAE(16, 64, k=65)


def test_integer_dtype(sae):
    with pytest.raises(ValueError, match="torch.int64.*floating point.*token ids"):
        sae(torch.arange(32).reshape(2, 16))


def test_nan_and_inf(sae):
    x = torch.randn(8, 16)
    x[3, 2] = float("nan")
    x[5, 0] = float("inf")
    with pytest.raises(ValueError, match="2 NaN/inf values"):
        sae.encode(x)
    with pytest.raises(ValueError, match="NaN/inf"):
        sm.train_sae(sae, x, progress=False)


def test_empty_data(sae):
    with pytest.raises(ValueError, match="empty"):
        sm.train_sae(sae, torch.empty(0, 16), progress=False)
    with pytest.raises(ValueError, match="empty iterable"):
        sm.train_sae(sae, iter([]), progress=False)


def test_not_a_tensor(sae):
    with pytest.raises(TypeError, match="torch.Tensor"):
        sae.encode([[0.0] * 16])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="d_sae must be a positive integer"):
        sm.ReLUSAE(16, 0)
    with pytest.raises(ValueError, match="l1_coeff must be >= 0"):
        sm.ReLUSAE(16, 32, l1_coeff=-1)
    with pytest.raises(ValueError, match="bandwidth > 0"):
        sm.JumpReLUSAE(16, 32, bandwidth=0)
    with pytest.raises(ValueError, match="prefix_sizes must be integers"):
        sm.MatryoshkaSAE(16, 32, prefix_sizes=[4.0, 8])
    with pytest.raises(ValueError, match=r"lie in \[1, d_sae=32\]"):
        sm.MatryoshkaSAE(16, 32, prefix_sizes=[4, 64])


def test_bad_decode_shape(sae):
    with pytest.raises(ValueError, match=r"expected \[..., d_sae=64\]"):
        sae.decode(torch.randn(3, 16))


def test_float64_input_is_accepted(sae):
    out = sae(torch.randn(4, 16, dtype=torch.float64))
    assert out.x_hat.dtype == torch.float32
