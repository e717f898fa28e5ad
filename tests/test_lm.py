"""Language-model machinery: model loading with a banner, activation caching (resumable, BOS handling),
shuffled streaming into train_sae, splice evaluation, dashboards, and the GPT-2-shaped path end to end."""

import collections
import json

import pytest
import torch

import sae_minimal as sm
from sae_minimal.lm import activations as act_mod
from sae_minimal.lm.activations import ActivationStore, cache_activations, run_to_hook
from sae_minimal.lm.dashboard import LatentContext, feature_dashboard
from sae_minimal.lm.evaluation import latent_density, splice_eval

transformer_lens = pytest.importorskip("transformer_lens")


@pytest.fixture(scope="module")
def tiny():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=16, d_vocab=50,
                                  act_fn="gelu_new", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg).eval()
    model.sae_minimal_name = "tiny-test"
    return model


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(1, 50, (20, 16), generator=g)
    t[:, 0] = 0  # BOS
    return t


def test_cache_matches_model_and_drops_bos(tiny, tokens, tmp_path):
    store = cache_activations(tiny, "blocks.0.hook_resid_post", tokens, tmp_path / "c", batch_size=6,
                              shard_rows=40, progress=False)
    _, cache = tiny.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    expected = cache["blocks.0.hook_resid_post"][:, 1:].reshape(-1, 32)
    assert len(store) == 20 * 15 and store.d == 32
    torch.testing.assert_close(store.load_all(), expected, rtol=1e-5, atol=1e-5)
    assert len(store.meta["shards"]) > 1
    assert store.meta["hook_name"] == "blocks.0.hook_resid_post" and store.meta["context"] == 16
    keep = cache_activations(tiny, "blocks.0.hook_resid_post", tokens, tmp_path / "k", drop_bos=False, progress=False)
    assert len(keep) == 20 * 16


def test_stop_at_layer_skips_later_blocks(tiny, tokens):
    called = []
    h = tiny.blocks[1].register_forward_hook(lambda *a: called.append(1))
    run_to_hook(tiny, tokens, "blocks.0.hook_resid_post")
    h.remove()
    assert called == []


def test_cache_resumes_after_interruption(tiny, tokens, tmp_path, monkeypatch):
    real = act_mod.run_to_hook
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(act_mod, "run_to_hook", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(tiny, "blocks.1.hook_resid_post", tokens, tmp_path, batch_size=4, shard_rows=1, progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["done_batches"] == 2 and not meta["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        ActivationStore(tmp_path)
    monkeypatch.setattr(act_mod, "run_to_hook", real)
    store = cache_activations(tiny, "blocks.1.hook_resid_post", tokens, tmp_path, batch_size=4, shard_rows=1,
                              progress=False)
    _, cache = tiny.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    torch.testing.assert_close(store.load_all(), cache["blocks.1.hook_resid_post"][:, 1:].reshape(-1, 32),
                               rtol=1e-5, atol=1e-5)


def test_refuses_to_mix_caches(tiny, tokens, tmp_path):
    cache_activations(tiny, "blocks.0.hook_resid_post", tokens, tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="different activation cache"):
        cache_activations(tiny, "blocks.1.hook_resid_post", tokens, tmp_path, progress=False)
    store = cache_activations(tiny, "blocks.1.hook_resid_post", tokens, tmp_path, progress=False, overwrite=True)
    assert store.meta["hook_name"] == "blocks.1.hook_resid_post"


def test_bad_hook_and_tokens(tiny, tokens, tmp_path):
    with pytest.raises(ValueError, match="not a hook of this model"):
        run_to_hook(tiny, tokens, "blocks.0.hook_nonsense")
    with pytest.raises(ValueError, match="integer tensor"):
        cache_activations(tiny, "blocks.0.hook_resid_post", tokens.float(), tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="No activation cache"):
        ActivationStore(tmp_path / "missing")


def test_shuffled_batches_cover_every_row_once(tiny, tokens, tmp_path):
    store = cache_activations(tiny, "blocks.0.hook_resid_post", tokens, tmp_path, batch_size=5, shard_rows=30,
                              progress=False)
    batches = list(store.batches(batch_size=10, buffer_rows=60, seed=1))
    got = torch.cat(batches)
    assert len(got) == len(store) // 10 * 10 and all(len(b) == 10 for b in batches)
    ref = store.load_all()
    assert not torch.equal(got, ref[: len(got)])               # shuffled
    key = lambda t: sorted(map(tuple, t.round(decimals=4).tolist()))
    assert len(got) == len(ref) and key(got) == key(ref)                          # every row exactly once
    assert sum(len(b) for b in store.batches(batch_size=10, n_tokens=1000, buffer_rows=60)) == 1000   # cycles


def test_cycled_small_store_repeats_no_row_within_a_pass(tiny, tokens, tmp_path):
    """A store smaller than the buffer, cycled with n_tokens: each pass is a permutation of the store (the mixing
    buffer used to fill up with several copies of it, so batches repeated rows)."""
    store = cache_activations(tiny, "blocks.0.hook_resid_post", tokens, tmp_path, batch_size=5, shard_rows=30,
                              progress=False)
    per_pass = len(store) // 10
    batches = list(store.batches(batch_size=10, n_tokens=3 * per_pass * 10, buffer_rows=10 * len(store), seed=2))
    assert len(batches) == 3 * per_pass
    count = lambda t: collections.Counter(map(tuple, t.round(decimals=4).tolist()))
    in_store = count(store.load_all())       # (a few rows are equal: the same tokens give the same activations)
    for p in range(3):
        in_pass = count(torch.cat(batches[p * per_pass:(p + 1) * per_pass]))
        assert all(n <= in_store[row] for row, n in in_pass.items())
    assert not torch.equal(batches[0], batches[per_pass])      # each pass reshuffled


class _Passthrough(torch.nn.Module):
    """A 'perfect SAE' (x_hat = x) or a useless one (x_hat = 0) for checking the splice metrics."""

    def __init__(self, d, zero=False):
        super().__init__()
        self.d_in, self.d_sae, self.zero = d, d, zero

    def forward(self, x):
        return sm.SAEOutput(x_hat=torch.zeros_like(x) if self.zero else x, latents=x.abs(), loss=x.sum())


def test_splice_eval_known_answers(tiny, tokens):
    hook = "blocks.0.hook_resid_post"
    perfect = splice_eval(tiny, _Passthrough(32), hook, tokens, progress=False)
    assert perfect["ce_spliced"] == pytest.approx(perfect["ce_clean"], abs=1e-5)
    assert perfect["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4) and perfect["kl_div"] == pytest.approx(0, abs=1e-5)
    useless = splice_eval(tiny, _Passthrough(32, zero=True), hook, tokens, progress=False)
    assert useless["ce_spliced"] == pytest.approx(useless["ce_zero_ablated"], abs=1e-5)
    assert useless["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-4)


def test_gpt2_shaped_pipeline_end_to_end(tmp_path):
    """GPT-2 small's real architecture (12 layers, d_model 768, vocab 50257), random weights: cache a mid-layer
    residual stream, train a TopK SAE from the streamed store for a few steps, splice it back in."""
    from sae_minimal.lm.models import gpt2_shaped
    model = gpt2_shaped()
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (12, 768, 50257)
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, 50257, (8, 33), generator=g)
    toks[:, 0] = 50256
    hook = "blocks.5.hook_resid_post"
    store = cache_activations(model, hook, toks, tmp_path, batch_size=4, progress=False)
    assert len(store) == 8 * 32 and store.d == 768
    sae = sm.TopKSAE(768, 1536, k=16)
    hist = sm.train_sae(sae, store.batches(batch_size=64, n_tokens=512, buffer_rows=128), n_tokens=512,
                        batch_size=64, progress=False, log_every=1)
    assert hist["fvu"][-1] < hist["fvu"][0]
    res = splice_eval(model, sae, hook, toks[:2], progress=False)
    assert 0 < res["l0"] <= 16 and res["ce_spliced"] > 0


def test_dashboard_renders_and_refuses_overwrite(tiny, tokens, tmp_path):
    sae = sm.TopKSAE(32, 64, k=4)
    ctx = LatentContext(tiny, sae, "blocks.0.hook_resid_post", tokens)
    density = latent_density(sae, ctx.acts[:, 1:].reshape(-1, 32))
    latent = int(density.argmax())
    board = feature_dashboard(ctx, latent, save_path=tmp_path / "d.html")
    text = board._repr_html_()
    for section in ("Top activations", "Quantile samples", "Activation histogram", "Logit effects", "Nearest latents"):
        assert section in text
    assert "background:rgba(255,120,0," in text
    with pytest.raises(FileExistsError, match="overwrite=True"):
        feature_dashboard(ctx, latent, save_path=tmp_path / "d.html")
    with pytest.raises(ValueError, match="latent must be in"):
        feature_dashboard(ctx, 64)


def test_load_lm_banner_offline(capsys, monkeypatch):
    from sae_minimal.lm import models
    if not (models.STANDIN_DIR / "model.safetensors").exists():
        pytest.skip("stand-in weights not built")
    monkeypatch.setenv("SAE_MINIMAL_OFFLINE", "1")
    model = models.load_lm()
    out = capsys.readouterr().out
    assert "MODEL IN USE: the bundled stand-in" in out and "NOT GPT-2 small" in out and "SAE_MINIMAL_OFFLINE" in out
    assert models.lm_name(model) == "standin" and model.cfg.n_layers == 4
    with pytest.raises(ValueError, match="'gpt2', 'standin', 'gpt2-shaped' or None, got 'llama'"):
        models.load_lm("llama")


def test_standin_is_a_real_language_model():
    """The model card's claim, re-measured: held-out loss at least 1.5 nats below the unigram baseline."""
    from sae_minimal.lm import models, text
    if not (models.STANDIN_DIR / "model.safetensors").exists():
        pytest.skip("stand-in weights not built")
    model = models.load_lm("standin", verbose=False)
    held = text.corpus_tokens(model.tokenizer, "held_out", context=128, n_windows=24, seed=0)
    with torch.no_grad():
        loss = model(held, return_type="loss").item()
    train_ids = text._encode_split(model.tokenizer, "train")
    counts = torch.bincount(train_ids, minlength=model.cfg.d_vocab).double() + 1
    unigram = float(-(counts / counts.sum()).log()[held[:, 1:]].mean())
    assert unigram - loss >= 1.5, (loss, unigram)


def test_lm_tools_without_the_lm_extra_say_how_to_install_it(monkeypatch):
    import sys

    from sae_minimal.lm import models
    monkeypatch.setitem(sys.modules, "transformer_lens", None)    # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'sae-minimal\[lm\]'"):
        models.gpt2_shaped(n_layers=1)


@pytest.mark.parametrize("variant", ["ReLUSAE", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE", "GatedSAE", "MatryoshkaSAE"])
def test_latent_density_counts_every_row_once_on_either_path(variant):
    """The sparse path counts the code's entries and the dense one the code's columns: both must give
    the fraction of rows on which each latent is > 0, for 2-D and for [batch, pos, d_in] input."""
    cls = getattr(sm, variant)
    kw = {"k": 4} if variant in ("TopKSAE", "BatchTopKSAE", "MatryoshkaSAE") else {}
    sae = cls(32, 128, seed=0, **kw).eval()
    if variant in ("BatchTopKSAE", "MatryoshkaSAE"):   # BatchTopK and its subclass
        sae.threshold.fill_(0.5)                      # as if trained: inference compares with θ
    x = torch.randn(3000, 32, generator=torch.Generator().manual_seed(0)) * 3
    expected = (sae.encode(x) > 0).float().mean(0)
    for sparse in (True, False):
        sae.sparse_path = sparse
        assert torch.equal(latent_density(sae, x, batch_size=700), expected), f"sparse_path={sparse}"
        assert torch.equal(latent_density(sae, x.reshape(30, 100, 32), batch_size=7), expected)
    with pytest.raises(ValueError, match="d_in=32"):
        latent_density(sae, torch.randn(10, 31))


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post",
                                  "blocks.0.hook_resid_pre", "blocks.0.hook_mlp_out"])
def test_run_from_hook_equals_replacing_the_activation(tiny, tokens, hook):
    """Going on from the hook (start_at_layer) must give exactly the logits of the whole model with the hook's
    activation swapped for the edited one: splice_eval and the ablations rely on it, bit for bit."""
    from sae_minimal.lm.activations import resumes_at, run_from_hook
    x = run_to_hook(tiny, tokens, hook)
    edited = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    expected = tiny.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: edited)])
    assert torch.equal(run_from_hook(tiny, edited, hook, tokens), expected)
    assert torch.equal(run_from_hook(tiny, x, hook, tokens), tiny(tokens))
    assert (resumes_at(tiny, hook) is None) == (hook == "blocks.0.hook_mlp_out")


def test_splice_eval_clean_loss_is_the_models_own(tiny, tokens):
    """The clean pass goes on from the cached hook activation; its CE must be the model's plain forward CE."""
    from sae_minimal.lm.evaluation import per_token_ce
    res = splice_eval(tiny, sm.TopKSAE(32, 64, k=4), "blocks.0.hook_resid_post", tokens, batch_size=7, progress=False)
    with torch.no_grad():                             # (batches summed in another order: rounding only)
        clean = per_token_ce(tiny(tokens), tokens)[:, 1:]
    assert res["ce_clean"] == pytest.approx(float(clean.mean()), rel=1e-6)


@pytest.mark.parametrize("variant", ["ReLUSAE", "TopKSAE", "JumpReLUSAE", "GatedSAE"])
def test_code_entries_give_what_the_dense_code_gives(variant):
    """encode_entries, codes_of and firing_counts read the code's entries instead of the [N, d_sae] code: on either
    path they must reproduce the dense code's columns and counts exactly (repeated and unordered latents too)."""
    from sae_minimal.lm.absorption import firing_counts
    from sae_minimal.lm.evaluation import codes_of
    sae = getattr(sm, variant)(32, 128, seed=0, **({"k": 4} if variant == "TopKSAE" else {})).eval()
    x = torch.randn(3000, 32, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.rand(3000, generator=torch.Generator().manual_seed(1)) < 0.3
    for sparse in (True, False):
        sae.sparse_path = sparse
        dense = sae.encode(x)
        code = sae.encode_entries(x)
        assert torch.equal(code.dense(128), dense) and bool((code.values != 0).all())
        latents = [5, 3, 5, 127, 0]
        assert torch.equal(codes_of(sae, x, latents), dense[:, latents]), f"sparse_path={sparse}"
        tp, fp = firing_counts(sae, x, y, chunk=700)
        assert torch.equal(tp, (dense[y] > 0).float().sum(0)) and torch.equal(fp, (dense[~y] > 0).float().sum(0))
