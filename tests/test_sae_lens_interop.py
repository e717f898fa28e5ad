"""SAELens interop that runs, not just loads: our SAE spliced by SAELens's HookedSAETransformer
gives splice_eval's CE loss; the lm tools take a SAELens SAE object; TopK checkpoints fold in
SAELens (as SAEDashboard needs). Also the dashboards' BOS statement and token display (no sae_lens
needed).

The BOS convention compared here: the SAE is spliced at every position but 0 (BOS), and the CE
averages the predictions made at positions 1 .. L-2. In SAELens: add_sae(...,
exclude_special_tokens=[bos]) (windows whose only BOS is at position 0) and loss_per_token[:, 1:].
"""

import json
import unicodedata
import warnings

import pytest
import torch

import sae_minimal as sm
from sae_minimal.io import InteropWarning, as_sae, from_sae_lens
from sae_minimal.lm.activations import run_to_hook
from sae_minimal.lm.dashboard import LatentContext, decode_token, feature_dashboard, top_contexts
from sae_minimal.lm.evaluation import latent_density, splice_eval
from sae_minimal.lm.models import load_lm, with_sae_hooks
from sae_minimal.lm.splitting import firing_recall
from sae_minimal.lm.steering import ablate_latent, ablation_effect, logit_effect_z
from sae_minimal.lm.text import load_tokens

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens", reason="sae_lens (in the dev extra) is not installed: "
                                                  "the SAELens interop tests need it")


@pytest.fixture(scope="module")
def standin():
    return load_lm("standin", verbose=False)


@pytest.fixture(scope="module")
def held_out(standin):
    return load_tokens(standin, 4, split="held_out")   # [4, 128], BOS first


@pytest.fixture(scope="module")
def trained(standin):
    """A TopK SAE trained briefly on the stand-in's residual stream at HOOK (BOS dropped)."""
    tokens = load_tokens(standin, 24, split="train")
    with torch.no_grad():
        acts = run_to_hook(standin, tokens, HOOK)[:, 1:].reshape(-1, standin.cfg.d_model)
    sae = sm.TopKSAE(standin.cfg.d_model, 1024, k=16)
    sm.train_sae(sae, acts, n_tokens=6000, batch_size=256, progress=False)
    return sae.eval()


@pytest.fixture(scope="module")
def theirs(sae_lens, standin, trained, tmp_path_factory):
    """``trained`` saved by save_sae and loaded by SAELens."""
    path = tmp_path_factory.mktemp("ckpt")
    sm.save_sae(trained, path, hook_name=HOOK, model_name=standin.cfg.model_name)
    return sae_lens.SAE.load_from_disk(str(path))


# --- SAELens's HookedSAETransformer splices our SAE --------------------------------------------
def test_sae_lens_run_with_saes_gives_splice_evals_ce(standin, held_out, trained, theirs):
    bos = standin.tokenizer.bos_token_id
    assert not (held_out[:, 1:] == bos).any()   # SAELens skips the token, we skip position 0
    model = with_sae_hooks(standin)
    with torch.no_grad():
        per_token = model.run_with_saes(held_out, saes=[theirs], exclude_special_tokens=[bos],
                                        return_type="loss", loss_per_token=True)   # [n, L-1]
        clean = model(held_out, return_type="loss", loss_per_token=True)
    ours = splice_eval(standin, trained, HOOK, held_out, progress=False)
    # the SAE really is in the loop (a missing hook name makes SAELens return the clean loss)
    assert float(per_token[:, 1:].mean()) > float(clean[:, 1:].mean()) + 0.05
    assert float(per_token[:, 1:].mean()) == pytest.approx(ours["ce_spliced"], abs=1e-5)
    assert float(clean[:, 1:].mean()) == pytest.approx(ours["ce_clean"], abs=1e-5)


def test_without_a_hook_name_save_warns_and_sae_lens_splices_nothing(sae_lens, standin, held_out,
                                                                      trained, tmp_path):
    with pytest.warns(InteropWarning, match="no hook_name.*skip this SAE"):
        sm.save_sae(trained, tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["metadata"]["hook_name"] is None
    model = with_sae_hooks(standin)
    with torch.no_grad():
        spliced = model.run_with_saes(held_out, saes=[sae_lens.SAE.load_from_disk(str(tmp_path))])
        torch.testing.assert_close(spliced, model(held_out))   # the trap the warning names


def test_hook_and_model_names_survive_load_and_save(sae_lens, standin, trained, tmp_path):
    sm.save_sae(trained, tmp_path / "a", hook_name=HOOK, model_name="gpt2",
                metadata={"context_size": 128, "prepend_bos": True})
    loaded = sm.load_sae(tmp_path / "a")
    assert loaded.sae_lens_metadata == {"hook_name": HOOK, "model_name": "gpt2",
                                        "context_size": 128, "prepend_bos": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # known from the checkpoint: no warning
        sm.save_sae(loaded, tmp_path / "b")
    meta = sae_lens.SAE.load_from_disk(str(tmp_path / "b")).cfg.metadata
    assert (meta.hook_name, meta.model_name, meta.context_size) == (HOOK, "gpt2", 128)
    with pytest.raises(ValueError, match="hookname"):
        sm.save_sae(trained, tmp_path / "c", metadata={"hookname": HOOK})


def test_pre_6_layouts_hook_point_is_kept_as_hook_name(sae_lens, tmp_path):
    sae = sm.ReLUSAE(8, 16)
    sm.save_sae(sae, tmp_path, hook_name="x")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["metadata"] = {}
    cfg["hook_point"], cfg["model_name"] = "blocks.0.hook_resid_pre", "gpt2"   # SAELens 5 names
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert sm.load_sae(tmp_path).sae_lens_metadata == {"hook_name": "blocks.0.hook_resid_pre",
                                                       "model_name": "gpt2"}
    assert sae_lens.SAE.load_from_disk(str(tmp_path)).cfg.metadata.hook_name == \
        "blocks.0.hook_resid_pre"


# --- the lm tools take a SAELens SAE --------------------------------------------------------------
def test_splice_eval_accepts_a_sae_lens_sae(standin, held_out, trained, theirs):
    a = splice_eval(standin, trained, HOOK, held_out, progress=False)
    b = splice_eval(standin, theirs, HOOK, held_out, progress=False)
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key


def test_dashboard_steering_ablation_and_splitting_accept_a_sae_lens_sae(standin, held_out,
                                                                         trained, theirs):
    ctx = LatentContext(standin, trained, HOOK, held_out)
    latent = int(latent_density(trained, ctx.acts[:, 1:].reshape(-1, trained.d_in)).argmax())
    assert feature_dashboard(ctx.with_sae(theirs), latent).html == \
        feature_dashboard(ctx, latent).html
    assert feature_dashboard(LatentContext(standin, theirs, HOOK, held_out), latent).html == \
        feature_dashboard(ctx, latent).html
    x = ctx.acts[:, 1:].reshape(-1, trained.d_in)
    torch.testing.assert_close(latent_density(theirs, x), latent_density(trained, x))
    torch.testing.assert_close(ablate_latent(x, theirs, latent), ablate_latent(x, trained, latent))
    torch.testing.assert_close(logit_effect_z(standin, theirs, [latent]),
                               logit_effect_z(standin, trained, [latent]))
    a = ablation_effect(standin, trained, HOOK, held_out[:2], latent)
    b = ablation_effect(standin, theirs, HOOK, held_out[:2], latent)
    for key in a:
        torch.testing.assert_close(b[key], a[key])
    ids = torch.arange(8)
    torch.testing.assert_close(firing_recall(theirs, ids, trained, ids, x),
                               firing_recall(trained, ids, trained, ids, x), equal_nan=True)


def test_as_sae_translates_once_and_again_after_an_edit(sae_lens, trained, theirs):
    assert as_sae(trained) is trained
    first = as_sae(theirs)
    assert isinstance(first, sm.TopKSAE) and as_sae(theirs) is first    # cached
    x = torch.randn(4, trained.d_in)
    with torch.no_grad():
        torch.testing.assert_close(first.encode(x), theirs.encode(x))
        theirs.b_enc.add_(1.0)                                           # edited in place
        try:
            again = as_sae(theirs)
            assert again is not first
            torch.testing.assert_close(again.encode(x), theirs.encode(x))
        finally:
            theirs.b_enc.sub_(1.0)


def test_from_sae_lens_refuses_what_it_cannot_compute(sae_lens):
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16, normalize_activations="layer_norm"))
    with pytest.raises(sm.CheckpointError, match="StandardSAE's cfg: 'normalize_activations'"):
        from_sae_lens(sae)


# --- TopK checkpoints SAELens can fold (SAEDashboard calls fold_W_dec_norm) --------------------
def _unit_topk(seed=0):
    sae = sm.TopKSAE(8, 24, k=4, seed=seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.2 * torch.randn_like(p))
        sae.normalize_decoder()                    # as the trainer keeps it
    return sae.eval()


def test_unit_norm_topk_is_saved_with_rescale_on_and_both_settings_agree(sae_lens, tmp_path):
    sae = _unit_topk()
    sm.save_sae(sae, tmp_path, hook_name=HOOK)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["rescale_acts_by_decoder_norm"] is True
    x = torch.randn(64, 8)
    with torch.no_grad():
        on = sae_lens.SAE.load_from_disk(str(tmp_path))
        (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "rescale_acts_by_decoder_norm":
                                                       False}))
        off = sae_lens.SAE.load_from_disk(str(tmp_path))
        for theirs in (on, off):                   # the two settings compute the same
            torch.testing.assert_close(theirs.encode(x), sae.encode(x))
            torch.testing.assert_close(theirs.decode(theirs.encode(x)), sae(x).x_hat)
        on.fold_W_dec_norm()                       # what SAEDashboard does first
        torch.testing.assert_close(on.encode(x), sae.encode(x))
        with pytest.raises(NotImplementedError, match="rescale_acts_by_decoder_norm is False"):
            off.fold_W_dec_norm()                  # why we write it on
    assert torch.equal(sm.load_sae(tmp_path).W_enc, sae.W_enc)   # our round trip stays exact


def test_topk_with_non_unit_rows_is_saved_with_rescale_off_and_a_warning(sae_lens, tmp_path):
    sae = _unit_topk()
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 24)[:, None])
    with pytest.warns(InteropWarning, match="not unit norm.*SAEDashboard"):
        sm.save_sae(sae, tmp_path, hook_name=HOOK)
    assert json.loads((tmp_path / "cfg.json").read_text())["rescale_acts_by_decoder_norm"] is False
    x = torch.randn(64, 8)
    with torch.no_grad():       # on would change which latents are kept; off computes the same
        torch.testing.assert_close(sae_lens.SAE.load_from_disk(str(tmp_path)).encode(x),
                                   sae.encode(x))


# --- dashboards: BOS and token display (no sae_lens needed) ---------------------------------------
def test_every_stand_in_token_is_displayed_visibly(standin):
    shown = [decode_token(standin, i) for i in range(standin.cfg.d_vocab)]
    alone = [decode_token(standin, i, alone=True) for i in range(standin.cfg.d_vocab)]
    assert all(alone) and not any(t.isspace() for t in alone)
    assert not any("\ufffd" in t for t in shown)
    assert not any(unicodedata.category(c) == "Cc" for t in shown for c in t)
    tok = standin.tokenizer
    assert decode_token(standin, tok.convert_tokens_to_ids("Ċ")) == "↵"       # "\n"
    assert decode_token(standin, tok.convert_tokens_to_ids("ĉ")) == "⇥"       # "\t"
    assert decode_token(standin, tok.convert_tokens_to_ids("Ġ"), alone=True) == "·"
    assert decode_token(standin, tok.convert_tokens_to_ids("Ġthe"), alone=True) == "·the"


def test_byte_tokens_show_their_bytes(standin):
    tok = standin.tokenizer
    byte_ids = [i for i in range(standin.cfg.d_vocab) if tok.decode([i]) == "\ufffd"]
    assert byte_ids, "the stand-in has byte-level tokens for the bytes 0x80-0xFF"
    for i in byte_ids:
        assert decode_token(standin, i).startswith("<0x")
    ids = tok.encode("—", add_special_tokens=False)                     # E2 80 94, one per token
    assert [decode_token(standin, i) for i in ids] == ["<0xE2>", "<0x80>", "<0x94>"]


def test_dashboard_states_bos_and_shows_newlines(standin, held_out, trained):
    ctx = LatentContext(standin, trained, HOOK, held_out)
    assert (ctx.latent_acts(0)[:, 0] == 0).all()                    # BOS is never counted
    newline = standin.tokenizer.convert_tokens_to_ids("Ċ")

    def top_window(latent):       # the tokens around the latent's largest activation
        acts = ctx.latent_acts(latent)
        row, pos = divmod(int(acts.argmax()), acts.shape[1])
        return held_out[row, max(1, pos - 10):pos + 4]
    latent = next(i for i in range(trained.d_sae)                   # a live latent, not a dead
                  if ctx.latent_acts(i).max() > 0 and (top_window(i) == newline).any())  # one's 0
    board = feature_dashboard(ctx, latent)
    assert "BOS (position 0 of each window) is not counted" in board.html
    assert "↵" in board.html and "\ufffd" not in board.html and "⏎" not in board.html
    lines = top_contexts(ctx, latent)
    assert "↵" in lines[0] and all("\n" not in line for line in lines)
