"""Known answers for each variant's forward pass and loss."""

import pytest
import torch

import sae_minimal as sm
from sae_minimal.base import mse

ALL = [
    (sm.ReLUSAE, {}), (sm.TopKSAE, {"k": 4}), (sm.BatchTopKSAE, {"k": 4}), (sm.JumpReLUSAE, {}),
    (sm.GatedSAE, {}), (sm.MatryoshkaSAE, {"k": 4, "prefix_sizes": [8, 16]}),
]


@pytest.mark.parametrize("cls,kw", ALL, ids=[c.__name__ for c, _ in ALL])
def test_shapes_and_leading_dims(cls, kw):
    sae = cls(8, 32, **kw)
    x = torch.randn(3, 5, 8)
    out = sae(x)
    assert out.x_hat.shape == (3, 5, 8) and out.latents.shape == (3, 5, 32)
    assert out.loss.ndim == 0 and torch.isclose(out.loss, sum(out.losses.values()))
    assert sae.W_enc.shape == (8, 32) and sae.W_dec.shape == (32, 8) and sae.b_dec.shape == (8,)
    sae.eval()
    if isinstance(sae, sm.BatchTopKSAE):
        sae.threshold.fill_(0.1)
    # encode/decode agree with forward
    torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x).x_hat)


def test_topk_keeps_exactly_k_nonnegative_latents():
    sae = sm.TopKSAE(16, 64, k=5)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every pre-activation positive, so exactly k survive the ReLU
    z = sae.encode(torch.randn(100, 16))
    assert ((z != 0).sum(-1) == 5).all()
    assert (z >= 0).all()
    pre = sae.pre_acts(torch.randn(100, 16))
    z = sae.activation(pre)
    kept = pre.gather(-1, pre.topk(5, dim=-1).indices)
    torch.testing.assert_close(z.gather(-1, pre.topk(5, dim=-1).indices), kept.relu())


def test_topk_relu_zeroes_negative_selected():
    from sae_minimal.topk import topk_relu
    pre = torch.tensor([[-3.0, -1.0, -2.0, 0.5]])
    assert topk_relu(pre, 2).tolist() == [[0.0, 0.0, 0.0, 0.5]]


def test_batchtopk_keeps_k_times_batch_in_total():
    sae = sm.BatchTopKSAE(16, 64, k=3)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)
    z = sae(torch.randn(50, 16)).latents
    assert int((z != 0).sum()) == 3 * 50
    # per-row counts vary: that is the point of BatchTopK
    assert (z != 0).sum(-1).float().std() > 0
    # the inference threshold was estimated from the smallest kept activation
    assert (sae.threshold > 0).all()
    sae.eval()
    x = torch.randn(10, 16)
    pre = sae.pre_acts(x)
    torch.testing.assert_close(sae.encode(x), pre * (pre > sae.threshold))


def test_batchtopk_untrained_inference_says_what_to_do():
    sae = sm.BatchTopKSAE(8, 16, k=2).eval()
    with pytest.raises(RuntimeError, match="train it first"):
        sae.encode(torch.randn(2, 8))


def test_jumprelu_passes_values_above_threshold_unchanged():
    from sae_minimal.jumprelu import jumprelu
    sae = sm.JumpReLUSAE(4, 3)
    with torch.no_grad():
        sae.log_threshold.copy_(torch.tensor([1.0, 2.0, 3.0]).log())
    pre = torch.tensor([[0.5, 2.5, 3.0], [1.5, 1.9, 7.0]])
    z = jumprelu(pre, sae.threshold, sae.bandwidth)
    assert z.tolist() == [[0.0, 2.5, 0.0], [1.5, 0.0, 7.0]]  # 3.0 is not > 3.0


def test_jumprelu_threshold_gradient_matches_ste_formula():
    # One latent, θ = 1, ε = 0.5, z = 1.2: |z - θ|/ε = 0.4 < 1/2, so K = 1.
    # ∂ JumpReLU/∂θ = -(θ/ε)·K = -2;  ∂ H/∂θ = -(1/ε)·K = -2.  z = 1.6: |0.6/0.5| > 1/2, K = 0.
    from sae_minimal.kernels import jumprelu_l0
    theta = torch.tensor([1.0], requires_grad=True)
    z = torch.tensor([[1.2], [1.6]], requires_grad=True)
    jumprelu_l0(z, theta, 0.5).latents.sum().backward()
    assert theta.grad.item() == pytest.approx(-2.0)
    assert z.grad.flatten().tolist() == [1.0, 1.0]  # true gradient wrt z: H(z - θ)
    theta.grad = None
    z.grad = None
    theta2 = torch.tensor([2.0], requires_grad=True)
    jumprelu_l0(z, theta2, 1.0).l0.sum().backward()  # ε=1: z=1.2: |u|=0.8 -> K=0; z=1.6: |u|=0.4 -> -1/ε
    assert theta2.grad.item() == pytest.approx(-1.0)
    assert z.grad.abs().sum() == 0            # the step passes no gradient to z


def test_jumprelu_log_threshold_gets_chain_rule_gradient():
    from sae_minimal.jumprelu import jumprelu
    sae = sm.JumpReLUSAE(4, 1, bandwidth=0.5, init_threshold=1.0, l0_coeff=0.0)
    pre = torch.tensor([[1.2]])
    jumprelu(pre, sae.threshold, sae.bandwidth).sum().backward()
    # d/d(log θ) = θ · d/dθ = 1 · (-2)
    assert sae.log_threshold.grad.item() == pytest.approx(-2.0)


def test_matryoshka_loss_is_sum_of_prefix_losses():
    sae = sm.MatryoshkaTopKSAE(8, 16, k=6, prefix_sizes=[2, 4, 8])
    x = torch.randn(32, 8)
    out = sae(x)
    z = out.latents
    by_hand = sum(mse(z[:, :m] @ sae.W_dec[:m] + sae.b_dec, x) for m in (2, 4, 8, 16))
    assert sae.prefix_sizes == [2, 4, 8, 16]
    terms = [v for k, v in out.losses.items() if k.startswith("mse")]
    torch.testing.assert_close(sum(terms), by_hand)
    torch.testing.assert_close(out.losses["mse"], mse(out.x_hat, x))


def test_gated_magnitude_path_shares_encoder_weights():
    sae = sm.GatedSAE(6, 10)
    with torch.no_grad():
        sae.r_mag.normal_()
        sae.b_mag.normal_()
        sae.b_gate.normal_()
    x = torch.randn(20, 6)
    xc = x - sae.b_dec
    pi_gate = xc @ sae.W_enc + sae.b_gate
    pi_mag = xc @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag   # W_mag = W_gate ⊙ exp(r_mag), eq. 7
    torch.testing.assert_close(sae.encode(x), (pi_gate > 0) * pi_mag.relu())
    assert not hasattr(sae, "b_enc")
    assert {n for n, _ in sae.named_parameters()} == {"W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag"}


def test_gated_aux_loss_trains_gate_not_decoder():
    sae = sm.GatedSAE(6, 10, l1_coeff=0.0)
    out = sae(torch.randn(20, 6))
    out.losses["aux"].backward()
    assert sae.W_dec.grad is None or sae.W_dec.grad.abs().sum() == 0  # frozen decoder copy
    assert sae.W_enc.grad.abs().sum() > 0


def test_relu_l1_term_is_l1_norm_of_latents():
    sae = sm.ReLUSAE(8, 16, l1_coeff=0.5)
    x = torch.randn(10, 8)
    out = sae(x)
    torch.testing.assert_close(out.losses["l1"], 0.5 * out.latents.abs().sum(-1).mean())
    assert (out.latents >= 0).all()


def test_seeded_init_is_reproducible_and_decoder_unit_norm():
    a, b, c = sm.TopKSAE(8, 16, k=2, seed=1), sm.TopKSAE(8, 16, k=2, seed=1), sm.TopKSAE(8, 16, k=2, seed=2)
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)
    torch.testing.assert_close(a.W_dec.norm(dim=-1), torch.ones(16))
    torch.testing.assert_close(a.W_enc, a.W_dec.T)  # tied init (Gao et al. 2024)


def test_auxk_revives_dead_latents_only():
    sae = sm.TopKSAE(8, 16, k=2, k_aux=4, dead_window=10)
    sae.train()
    sae.tokens_since_fired[:8] = 100   # latents 0-7 "dead"
    out = sae(torch.randn(4, 8))
    assert out.losses["auxk"] > 0
    sae.tokens_since_fired.zero_()
    out = sae(torch.randn(4, 8))
    assert out.losses["auxk"] == 0


def test_jumprelu_sae_loss_is_mse_plus_l0_price():
    sae = sm.JumpReLUSAE(8, 32, bandwidth=0.5, init_threshold=0.3, l0_coeff=0.7)
    x = torch.randn(64, 8)
    out = sae(x)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    on = pre > sae.threshold
    torch.testing.assert_close(out.latents, pre * on)
    torch.testing.assert_close(out.losses["mse"], mse(out.x_hat, x))
    torch.testing.assert_close(out.losses["l0"], 0.7 * on.sum(-1).float().mean())


def test_auxk_takes_the_top_k_of_the_dead_latents_as_the_masked_formula_does():
    """auxk_loss selects among the dead columns directly and sends its gradient to the encoder from
    the entries it read (kernels.pre_entries); it equals the paper's formula written with every live
    column of pre masked to -inf (the same loss, gradients up to summation order)."""
    from sae_minimal.topk import auxk_loss
    torch.manual_seed(0)
    sae = sm.TopKSAE(16, 256, k=4, k_aux=8, seed=0)
    with torch.no_grad():
        sae.b_dec.normal_(), sae.b_enc.normal_(std=0.1)
    dead = torch.zeros(256, dtype=torch.bool)
    dead[torch.randperm(256)[:20]] = True
    sae.tokens_since_fired[dead] = 10**9
    x, x_hat = torch.randn(64, 16), torch.randn(64, 16)

    def masked(pre):
        values, indices = pre.masked_fill(~dead, float("-inf")).topk(8, dim=-1)
        e = x - x_hat
        e_hat = torch.zeros(64, 256).scatter(-1, indices, values.relu()) @ sae.W_dec
        var = lambda v: mse(v.mean(0).expand_as(v), v)
        return sae.aux_coeff * min(20 / 8, 1.0) * var(x) / var(e) * mse(e_hat, e)

    results = []                              # (loss, grad W_enc, grad W_dec, grad b_enc, grad b_dec)
    for loss_fn in (lambda pre: auxk_loss(sae, x, x_hat, pre, 8, sae.aux_coeff), masked):
        sae.zero_grad()
        loss = loss_fn(sae.pre_acts(x))
        loss.backward()
        results.append((loss.detach(),
                        *(p.grad.clone() for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec))))
    for ours, paper in zip(*results):
        torch.testing.assert_close(ours, paper)
    assert (results[0][1] != 0).any(dim=0).sum() <= 20           # only dead columns are trained
