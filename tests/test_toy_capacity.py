import math

import pytest
import torch

from sae_minimal.theory import capacity, toy


def test_toy_sweep_reproduces_known_regimes():
    # n=2 features in m=1 dimension; feature 1 has importance 1, feature 2 importance r.
    p = torch.tensor([1.0, 1.0, 0.05])     # 1 - S
    r = torch.tensor([0.3, 3.0, 1.0])
    imp = torch.stack([torch.ones(3), r], -1)
    model = toy.train_toy(2, 1, p, imp, steps=2000, batch=512, lr=1e-2, restarts=2, progress=False)
    regimes = [toy.REGIMES[i] for i in toy.classify_last_feature(model.W)]
    assert regimes == ["not represented", "dedicated dimension", "superposition"]
    # the superposition solution is an antipodal pair
    w = model.W[2, 0]
    assert w[0] * w[1] < 0 and abs(abs(w[0]) - abs(w[1])) < 0.3


def test_batch_last_training_path_equals_the_plain_formula():
    # train_toy trains on x transposed to [I, n, B] (speed); it must be toy_loss on the same x
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(4, 3, generator=gen) * 0.9 + 0.05
    imp = torch.rand(4, 3, generator=gen) + 0.5
    W = torch.randn(4, 2, 3, generator=gen, requires_grad=True)
    b = torch.randn(4, 3, generator=gen, requires_grad=True)
    x = toy.sample_features(p, 64, torch.Generator().manual_seed(1))
    xT = toy._sample_batch_last(p, 64, torch.Generator().manual_seed(1))
    assert torch.equal(xT, x.transpose(1, 2))                   # the same random numbers
    plain, fast = toy.toy_loss(W, b, x, imp), toy._toy_loss_batch_last(W, b, xT, imp)
    assert torch.allclose(plain, fast, rtol=1e-5, atol=1e-7)
    grads = [torch.autograd.grad(loss.sum(), (W, b)) for loss in (plain, fast)]
    for g_plain, g_fast in zip(*grads):
        assert torch.allclose(g_plain, g_fast, rtol=1e-4, atol=1e-6)


def test_feature_dimensionality_of_known_geometries():
    antipodal = torch.tensor([[[1.0, -1.0]]])                     # 2 features sharing 1 dim
    assert toy.feature_dimensionality(antipodal)[0].tolist() == pytest.approx([0.5, 0.5])
    angles = torch.arange(3) * 2 * math.pi / 3
    triangle = torch.stack([angles.cos(), angles.sin()])[None]    # 3 features in 2 dims
    assert toy.feature_dimensionality(triangle)[0].tolist() == pytest.approx([2 / 3] * 3, abs=1e-5)
    angles = torch.arange(5) * 2 * math.pi / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])[None]
    assert toy.feature_dimensionality(pentagon)[0].tolist() == pytest.approx([2 / 5] * 5, abs=1e-5)
    assert toy.dimensions_per_feature(antipodal).item() == pytest.approx(0.5)


def test_welch_bounds():
    assert capacity.welch_bound(4096, 0.1) == math.inf          # d·ε² = 40.96 >= 1: vacuous
    assert capacity.welch_bound(4096, 0.01) == math.floor(4096 * (1 - 1e-4) / (1 - 0.4096))
    # the k=1 bound in log form agrees with the plain one
    assert math.exp(capacity.log_welch_bound_k(100, 0.05, 1)) == pytest.approx(100 * (1 - 0.0025) / 0.75)
    # higher orders rescue the vacuous case, and the best bound is finite
    log_n, k = capacity.best_log_welch_bound(4096, 0.1)
    assert math.isfinite(log_n) and k > 1
    assert capacity.log_welch_bound_k(4096, 0.1, 2) == math.inf
    # coherence floors: the first Welch bound sqrt((n-d)/(d(n-1))), until n passes C(d+1, 2) = d(d+1)/2
    assert capacity.welch_coherence_floor(1_000_000, 4096) == (pytest.approx(math.sqrt((1e6 - 4096) / (4096 * (1e6 - 1)))), 1)
    floor2, k = capacity.welch_coherence_floor(34_000_000, 4096)
    assert k == 2 and floor2 == pytest.approx(((34e6 / (4096 * 4097 / 2) - 1) / (34e6 - 1)) ** 0.25)
    assert floor2 > math.sqrt((34e6 - 4096) / (4096 * (34e6 - 1)))     # tighter than the first
    assert capacity.welch_coherence_floor(10, 16) == (0.0, 0)           # n <= d: orthogonal vectors fit


def test_random_vectors_respect_welch_and_packing_beats_random():
    d, n = 8, 24
    U = capacity.random_unit_vectors(n, d)
    eps_random = capacity.max_coherence(U)
    packed = capacity.pack_directions(n, d, steps=300)
    eps_packed = capacity.max_coherence(packed)
    welch_eps = math.sqrt((n - d) / (d * (n - 1)))                 # the Welch bound on coherence
    assert welch_eps <= eps_packed + 1e-6 and eps_packed < eps_random
    assert torch.allclose(packed.norm(dim=-1), torch.ones(n))


def test_kabatyanskii_levenshtein_is_above_the_random_packing_estimate():
    # an upper bound must sit above what random packing achieves where its leading term is meaningful
    for eps in (0.1, 0.2, 0.3):
        log2_kl = capacity.log2_kabatyanskii_levenshtein(4096, eps)
        assert log2_kl > capacity.log_random_packing(4096, eps) / math.log(2)
    assert capacity.log2_kabatyanskii_levenshtein(4096, 0.2) > capacity.log2_kabatyanskii_levenshtein(4096, 0.1)
