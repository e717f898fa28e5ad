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


NAN, INF = float("nan"), float("inf")
BAD_HYPERPARAMETERS = [  # (class, argument, value): each must be refused naming the argument
    (sm.ReLUSAE, "l1_coeff", NAN), (sm.GatedSAE, "l1_coeff", INF), (sm.GatedSAE, "l1_coeff", -1),
    (sm.JumpReLUSAE, "l0_coeff", NAN), (sm.JumpReLUSAE, "bandwidth", NAN),
    (sm.JumpReLUSAE, "bandwidth", INF), (sm.JumpReLUSAE, "bandwidth", "2"),
    (sm.JumpReLUSAE, "init_threshold", NAN), (sm.JumpReLUSAE, "init_threshold", 0.0),
    (sm.TopKSAE, "aux_coeff", NAN), (sm.TopKSAE, "aux_coeff", -0.5), (sm.TopKSAE, "k", NAN),
    (sm.TopKSAE, "k_aux", 0), (sm.TopKSAE, "k_aux", 2.5), (sm.TopKSAE, "dead_window", NAN),
    (sm.TopKSAE, "dead_window", 0), (sm.TopKSAE, "dead_window", 2.5),
    (sm.TopKSAE, "dead_window", "100"), (sm.BatchTopKSAE, "threshold_momentum", NAN),
    (sm.BatchTopKSAE, "threshold_momentum", 1.0), (sm.BatchTopKSAE, "threshold_momentum", -0.1),
    (sm.BatchTopKSAE, "threshold_momentum", "0.9"), (sm.MatryoshkaSAE, "prefix_sizes", 8),
    (sm.MatryoshkaSAE, "prefix_sizes", "8"), (sm.MatryoshkaSAE, "prefix_sizes", [NAN, 8]),
    (sm.MatryoshkaSAE, "prefix_sizes", [0, 8]), (sm.MatryoshkaTopKSAE, "prefix_sizes", [True]),
]


@pytest.mark.parametrize("cls,name,value", BAD_HYPERPARAMETERS,
                         ids=[f"{c.__name__}-{n}={v!r}" for c, n, v in BAD_HYPERPARAMETERS])
def test_nan_inf_and_out_of_range_hyperparameters_are_refused_by_name(cls, name, value):
    kw = {"k": 4} if issubclass(cls, sm.TopKSAE) else {}
    with pytest.raises(ValueError, match=name):
        cls(16, 32, **{**kw, name: value})


def test_valid_hyperparameters_in_other_number_types_are_accepted():
    import numpy as np
    assert sm.TopKSAE(16, 32, k=4, dead_window=1e5).dead_window == 100_000
    assert sm.BatchTopKSAE(16, 32, k=4, threshold_momentum=0).threshold_momentum == 0.0
    assert sm.MatryoshkaSAE(16, 32, k=4, prefix_sizes=np.array([4, 8])).prefix_sizes == [4, 8, 32]
