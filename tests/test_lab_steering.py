"""The notebooks' LM lab (cache once, train once, never reuse the wrong thing), steering and ablation helpers with
known answers, feature-splitting helpers, the shrinkage metric and BatchTopK's inference threshold."""

import os

import pytest
import torch

import sae_minimal as sm
from sae_minimal.lm.splitting import children, firing_recall
from sae_minimal.metrics import nearest, relative_reconstruction_bias

pytest.importorskip("transformer_lens")


# --- metrics and BatchTopK ---------------------------------------------------------------------------------------
def test_relative_reconstruction_bias_known_values():
    x = torch.randn(500, 16) + 5.0
    assert relative_reconstruction_bias(x, x) == pytest.approx(1.0)
    centre = x.mean(0)
    shrunk = centre + 0.5 * (x - centre)                 # every reconstruction half as long around the mean
    assert relative_reconstruction_bias(x, shrunk, center=centre) == pytest.approx(0.5, rel=1e-5)
    assert relative_reconstruction_bias(x, shrunk) > 0.9  # uncentred, the shared offset hides the shrinkage
    with pytest.raises(ValueError, match="shape"):
        relative_reconstruction_bias(x, x[:, :8])


def test_batchtopk_inference_l0_matches_k_after_short_training(easy_data):
    sae = sm.BatchTopKSAE(64, 256, k=6)
    sm.train_sae(sae, easy_data.activations[:30_000], n_tokens=30_000, batch_size=512, progress=False)
    with torch.no_grad():
        l0 = sm.metrics.l0(sae(easy_data.activations[-5000:]).latents)
    assert 0.8 * 6 < l0 < 1.25 * 6, f"inference L0 {l0:.2f} should be close to k=6"


# --- splitting -------------------------------------------------------------------------------------------------
class _Fixed:
    """A stand-in 'SAE' whose latents are given columns of x (firing where positive)."""

    def __init__(self, columns):
        self.columns = columns

    def encode(self, x):
        return x[:, self.columns].relu()


def test_children_and_nearest_known_family():
    e = torch.eye(6)
    parents = e[:2]                                                  # two narrow latents: e0, e1
    wide = torch.stack([e[0] + 0.3 * e[2], e[0] + 0.3 * e[3], e[1], e[4]])
    family = children(parents, wide, min_cos=0.5)
    assert sorted(k for k, _ in family[0]) == [0, 1] and [k for k, _ in family[1]] == [2]
    assert 3 not in {k for kids in family.values() for k, _ in kids}   # e4 matches nothing
    cos, idx = nearest(wide, parents)
    assert idx.tolist()[:3] == [0, 0, 1] and cos[2] == pytest.approx(1.0)


def test_firing_recall_known_answer():
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    a, b = _Fixed([0, 0]), _Fixed([1, 0])
    recall = firing_recall(a, torch.tensor([0, 1]), b, torch.tensor([0, 1]), x)
    assert recall.tolist() == pytest.approx([2 / 3, 1.0])           # a0 fires on rows 0-2, b0 on rows 0, 2, 3


# --- steering and ablation on the stand-in -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def standin():
    from sae_minimal.lm.models import load_standin
    from sae_minimal.lm.text import corpus_tokens

    model = load_standin()
    return model, corpus_tokens(model.tokenizer, "held_out", 32, n_windows=6, seed=0)


HOOK = "blocks.2.hook_resid_post"


def test_generate_is_reproducible_and_alpha_zero_is_unsteered(standin):
    from sae_minimal.lm.steering import generate, random_direction

    model, tokens = standin
    prompts = tokens[:, :8]
    a = generate(model, prompts, 5, seed=3)
    b = generate(model, prompts, 5, hook_name=HOOK, direction=random_direction(256), alpha=0.0, seed=3)
    assert torch.equal(a, b) and torch.equal(a[:, :8], prompts) and a.shape == (6, 13)
    c = generate(model, prompts, 5, hook_name=HOOK, direction=random_direction(256), alpha=200.0, seed=3)
    assert not torch.equal(a, c), "a huge steering vector must change the samples"
    with pytest.raises(ValueError, match="temperature"):
        generate(model, prompts, 2, temperature=0)


@pytest.mark.parametrize("alpha", [0.0, 4.0, 40.0])
def test_generate_with_the_key_value_cache_samples_what_the_full_rerun_samples(standin, alpha):
    from sae_minimal.lm.steering import generate, random_direction

    model, tokens = standin
    prompts = tokens[:, :12]
    direction = random_direction(256, seed=1)
    cached = generate(model, prompts, 10, hook_name=HOOK, direction=direction, alpha=alpha, seed=5)
    rerun = generate(model, prompts, 10, hook_name=HOOK, direction=direction, alpha=alpha, seed=5, kv_cache=False)
    assert torch.equal(cached, rerun), f"{int((cached != rerun).sum())} sampled tokens differ at alpha={alpha}"


def test_concept_logprob_rises_when_steering_towards_the_unembedding(standin):
    from sae_minimal.lm.steering import concept_logprob

    model, tokens = standin
    concept = torch.tensor([100, 200])
    # in the last block, through the final LayerNorm's gain (LN also removes the mean), straight into the unembedding
    direction = model.ln_final.w * model.W_U[:, concept].sum(-1)
    direction = direction - direction.mean()
    direction = direction / direction.norm()
    base = concept_logprob(model, tokens, concept)
    steered = concept_logprob(model, tokens, concept, hook_name="blocks.3.hook_resid_post", direction=direction,
                              alpha=10.0)
    assert (steered > base + 5).all()


def test_next_token_entropy_by_hand_and_under_a_push(standin):
    """The entropy of the next-token distributions, averaged per window (position 0's prediction,
    made at BOS, left out as concept_logprob does), unsteered and with a push added by hand at
    every position but BOS; a large random push flattens the prediction (05's reading of why a
    rare concept's log-probability rises under any push)."""
    from sae_minimal.lm.steering import next_token_entropy, random_direction

    model, tokens = standin
    direction = random_direction(256, seed=3)

    def by_hand(alpha):
        def push(act, hook):
            act = act.clone()
            act[:, 1:] += alpha * direction
            return act
        with torch.no_grad():
            p = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, push)])[:, 1:].float().softmax(-1)
        return -(p * p.clamp_min(1e-30).log()).sum(-1).mean(-1)

    torch.testing.assert_close(next_token_entropy(model, tokens), by_hand(0.0), atol=1e-4, rtol=1e-4)
    pushed = next_token_entropy(model, tokens, hook_name=HOOK, direction=direction, alpha=40.0)
    torch.testing.assert_close(pushed, by_hand(40.0), atol=1e-4, rtol=1e-4)
    assert (pushed > by_hand(0.0) + 0.5).all()


def test_ablation_effect_known_answers(standin):
    from sae_minimal.lm.steering import ablate_latent, ablation_effect, clean_token_ce

    model, tokens = standin
    sae = sm.TopKSAE(256, 512, k=8).eval()
    x = torch.randn(10, 256) * 20
    latent = int(sae.encode(x).gt(0).sum(0).argmax())
    expected = x - sae.encode(x)[:, latent, None] * sae.W_dec[latent]
    assert torch.allclose(ablate_latent(x, sae, latent), expected)

    from sae_minimal.lm.activations import run_to_hook
    acts = run_to_hook(model, tokens, HOOK)
    busy = int(sae.encode(acts[:, 1:-1]).gt(0).flatten(0, 1).sum(0).argmax())
    with torch.no_grad():
        sae.W_dec[busy] = 0.0                      # removing a zero direction changes nothing...
    effect = ablation_effect(model, sae, HOOK, tokens, busy, clean_ce=clean_token_ce(model, tokens))
    assert len(effect["ablation"]) > 0
    assert effect["ablation"].abs().max() < 1e-4
    # ...and the control's norm is matched to ||d_i|| = 0: no change beyond rounding (clean_ce came
    # from all rows at once, the edited pass from the firing rows only; a matmul over another number
    # of rows may round otherwise: 2.4e-6 seen on one CPU, exactly 0 on another)
    assert effect["control"].abs().max() < 1e-5


def test_ablation_effect_equals_a_hand_made_ablation_and_control(standin, monkeypatch):
    """With a real direction: the loss change where the latent fires, against the same edit made by hand (a sign
    error, a shifted position or an unmatched control norm would all show here)."""
    from sae_minimal.lm.activations import run_to_hook
    from sae_minimal.lm.evaluation import per_token_ce
    from sae_minimal.lm.steering import ablation_effect, random_direction

    model, tokens = standin
    sae = sm.TopKSAE(256, 512, k=8).eval()
    with torch.no_grad():
        acts = run_to_hook(model, tokens, HOOK)
        f = sae.encode(acts)
        latent = int(f[:, 1:-1].gt(0).flatten(0, 1).sum(0).argmax())
        f = f[..., latent].clone()
        f[:, 0] = f[:, -1] = 0                     # BOS is never touched; the last position predicts nothing
        d = sae.W_dec[latent]
        r = random_direction(256, seed=latent, norm=float(d.norm()))
        clean = per_token_ce(model(tokens), tokens)
        fires = f[:, :-1] > 0

        def by_hand(direction):
            hook = (HOOK, lambda act, hook: act - f[..., None] * direction)
            return (per_token_ce(model.run_with_hooks(tokens, fwd_hooks=[hook]), tokens) - clean)[fires]

        effect = ablation_effect(model, sae, HOOK, tokens, latent)
    assert effect["ablation"].abs().max() > 1e-3, "the ablation should move the loss"
    torch.testing.assert_close(effect["ablation"], by_hand(d), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(effect["control"], by_hand(r), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(effect["activation"], f[:, :-1][fires])
    # an extra control along another latent's row, given at twice its length: rescaled to ||d_i||
    other = sae.W_dec[(latent + 1) % 512].detach()
    with torch.no_grad():
        more = ablation_effect(model, sae, HOOK, tokens, latent, controls={"other latent": 2 * other})
    torch.testing.assert_close(more["other latent"], by_hand(other * (d.norm() / other.norm())), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(more["ablation"], effect["ablation"])
    with torch.no_grad():   # match_norm=False: moved along at the length given
        as_given = ablation_effect(model, sae, HOOK, tokens, latent, controls={"other latent": 2 * other},
                                   match_norm=False)
    torch.testing.assert_close(as_given["other latent"], by_hand(2 * other), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="nonzero"):
        ablation_effect(model, sae, HOOK, tokens, latent, controls={"bad": torch.zeros(256)})
    # the co-firing control: at each firing position, another latent firing there whose f_j·||d_j|| is closest to
    # f_i·||d_i||, removed whole; made by hand here from the full encoding
    with torch.no_grad():
        codes = sae.encode(acts)
        norms = sae.W_dec.norm(dim=-1)
        part = torch.zeros_like(acts)
        for b, t in (f > 0).nonzero().tolist():
            others = [j for j in codes[b, t].nonzero().squeeze(1).tolist() if j != latent]
            if others:
                j = min(others, key=lambda j: abs(float(codes[b, t, j] * norms[j] - f[b, t] * norms[latent])))
                part[b, t] = codes[b, t, j] * sae.W_dec[j]
        hook = (HOOK, lambda act, hook: act - part)
        want = (per_token_ce(model.run_with_hooks(tokens, fwd_hooks=[hook]), tokens) - clean)[fires]
        co = ablation_effect(model, sae, HOOK, tokens, latent, cofiring=True)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(co["co-firing"], want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(co["ablation"], effect["ablation"])
    # called outside no_grad, as a notebook calls it, it runs its passes without autograd itself (with autograd,
    # reading ||d_i|| off a parameter that requires grad warns, and that warning showed in notebook 05's output)
    import sae_minimal.lm.steering as steering
    grad_modes = []
    real = steering.run_from_hook
    monkeypatch.setattr(steering, "run_from_hook", lambda *a, **k: grad_modes.append(torch.is_grad_enabled()) or real(*a, **k))
    ablation_effect(model, sae, HOOK, tokens, latent, cofiring=True)
    assert grad_modes and not any(grad_modes)


def test_ablation_effect_on_a_concept_equals_a_hand_made_concept_loss(standin):
    """concept_ids: every value is the change in -log P(next token in the concept), by hand here; the
    co-firing control is scored the same way; clean_ce (a CE) cannot be mixed in."""
    from sae_minimal.lm.activations import run_to_hook
    from sae_minimal.lm.steering import ablation_effect, clean_token_ce

    model, tokens = standin
    sae = sm.TopKSAE(256, 512, k=8).eval()
    concept = torch.tensor([5, 17, 42])
    with torch.no_grad():
        acts = run_to_hook(model, tokens, HOOK)
        f = sae.encode(acts)
        latent = int(f[:, 1:-1].gt(0).flatten(0, 1).sum(0).argmax())
        f = f[..., latent].clone()
        f[:, 0] = f[:, -1] = 0
        fires = f[:, :-1] > 0

        def concept_loss(logits):
            return -logits[:, :-1].log_softmax(-1)[..., concept].logsumexp(-1)

        clean = concept_loss(model(tokens))
        hook = (HOOK, lambda act, hook: act - f[..., None] * sae.W_dec[latent])
        want = (concept_loss(model.run_with_hooks(tokens, fwd_hooks=[hook])) - clean)[fires]
        effect = ablation_effect(model, sae, HOOK, tokens, latent, concept_ids=concept, cofiring=True)
        plain = ablation_effect(model, sae, HOOK, tokens, latent)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(effect["ablation"], want, atol=1e-4, rtol=1e-4)
    assert set(effect) == {"ablation", "control", "co-firing", "co-firing latent", "co-firing coefficient", "activation"}
    assert not torch.allclose(effect["ablation"], plain["ablation"]), "a concept loss is not the CE"
    # the scored co-firing control: at each firing position, the other firing latent whose f_j·score_j (here each
    # row's direct logit effect on the concept) is closest to the latent's f_i·score_i, or the largest, removed
    # whole; made by hand from the full encoding
    from sae_minimal.lm.steering import direct_logit_effect
    score = direct_logit_effect(model, sae.W_dec, concept)                          # [d_sae]
    assert score.shape == (512,)
    assert float(score[latent]) == pytest.approx(direct_logit_effect(model, sae.W_dec[latent], concept), rel=1e-5)
    score = score * torch.sign(score[latent])      # the latent's own score positive, as for a concept's writer
    codes = sae.encode(acts).detach()
    chosen_by = {}
    for pick in ("closest", "largest", "scaled"):
        def key(b, t, j):
            value = float(codes[b, t, j] * score[j])
            return abs(value - float(f[b, t] * score[latent])) if pick == "closest" else -value
        with torch.no_grad():
            part, chosen, coef = torch.zeros_like(acts), torch.full(f.shape, -1), torch.zeros(f.shape)
            for b, t in (f > 0).nonzero().tolist():
                others = [j for j in codes[b, t].nonzero().squeeze(1).tolist() if j != latent]
                if others:
                    j = min(others, key=lambda j: key(b, t, j))
                    c = float(codes[b, t, j])
                    own, top = float(f[b, t] * score[latent]), c * float(score[j])
                    if pick == "scaled" and top > 0:        # only the latent's own push of it
                        c *= min(max(own / top, 0.0), 1.0)
                    part[b, t], chosen[b, t], coef[b, t] = c * sae.W_dec[j], j, c
            hook = (HOOK, lambda act, hook: act - part)
            want = (concept_loss(model.run_with_hooks(tokens, fwd_hooks=[hook])) - clean)[fires]
            scored = ablation_effect(model, sae, HOOK, tokens, latent, concept_ids=concept, cofiring_score=score,
                                     cofiring_pick=pick)
        assert set(scored) == {"ablation", "control", "scored co-firing", "scored co-firing latent",
                               "scored co-firing coefficient", "activation"}
        torch.testing.assert_close(scored["scored co-firing"], want, atol=1e-4, rtol=1e-4)
        assert torch.equal(scored["scored co-firing latent"], chosen[:, :-1][fires]), pick
        torch.testing.assert_close(scored["scored co-firing coefficient"], coef[:, :-1][fires], atol=1e-5, rtol=1e-5)
        chosen_by[pick] = scored
    assert not torch.equal(chosen_by["closest"]["scored co-firing latent"], chosen_by["largest"]["scored co-firing latent"])
    largest, scaled = chosen_by["largest"], chosen_by["scaled"]
    assert torch.equal(largest["scored co-firing latent"], scaled["scored co-firing latent"])
    cut = scaled["scored co-firing coefficient"] / largest["scored co-firing coefficient"]
    assert ((cut > 0.01) & (cut < 0.99)).any(), "some positions should be cut down part of the way"
    # where the latent outscores every co-firing latent, "scaled" removes the strongest one whole
    big = score.clone()
    big[latent] = 1e6
    whole = ablation_effect(model, sae, HOOK, tokens, latent, cofiring_score=big, cofiring_pick="scaled")
    torch.testing.assert_close(whole["scored co-firing coefficient"], largest["scored co-firing coefficient"])
    # where the latent's own score is negative, a "scaled" match removes nothing (never a negative amount)
    negative = score.clone()
    negative[latent] = -abs(float(score[latent])) - 1.0
    none = ablation_effect(model, sae, HOOK, tokens, latent, cofiring_score=negative, cofiring_pick="scaled")
    kept = none["scored co-firing latent"] >= 0
    assert kept.any() and (none["scored co-firing coefficient"][kept] == 0).all()
    # a score per position: the same per-latent score spread over positions picks the same latents, and a
    # random one picks what the hand-made rule picks with it
    spread = score.expand(*tokens.shape, -1).clone()
    again = ablation_effect(model, sae, HOOK, tokens, latent, cofiring_score=spread, cofiring_pick="scaled")
    assert torch.equal(again["scored co-firing latent"], scaled["scored co-firing latent"])
    torch.testing.assert_close(again["scored co-firing coefficient"], scaled["scored co-firing coefficient"])
    per_position = torch.randn(*tokens.shape, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        chosen = torch.full(f.shape, -1)
        for b, t in (f > 0).nonzero().tolist():
            others = [j for j in codes[b, t].nonzero().squeeze(1).tolist() if j != latent]
            if others:
                chosen[b, t] = min(others, key=lambda j: abs(float(codes[b, t, j] * per_position[b, t, j]
                                                                  - f[b, t] * per_position[b, t, latent])))
        by_position = ablation_effect(model, sae, HOOK, tokens, latent, cofiring_score=per_position, batch_size=3)
    assert torch.equal(by_position["scored co-firing latent"], chosen[:, :-1][fires])
    with pytest.raises(ValueError, match="or per position"):
        ablation_effect(model, sae, HOOK, tokens, latent, cofiring_score=per_position[:, 1:])
    with pytest.raises(ValueError, match="cofiring_score must be a float"):
        ablation_effect(model, sae, HOOK, tokens, latent, cofiring_score=score[:10])
    with pytest.raises(ValueError, match="cofiring_pick"):
        ablation_effect(model, sae, HOOK, tokens, latent, cofiring_score=score, cofiring_pick="nearest")
    with pytest.raises(ValueError, match="leave clean_ce out"):
        ablation_effect(model, sae, HOOK, tokens, latent, concept_ids=concept,
                        clean_ce=clean_token_ce(model, tokens))
    with pytest.raises(ValueError, match="concept_ids"):
        ablation_effect(model, sae, HOOK, tokens, latent, concept_ids=torch.tensor([10**7]))


# --- the lab -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from sae_minimal.lm.lab import Lab

    old = os.environ.get("SAE_MINIMAL_CACHE")
    os.environ["SAE_MINIMAL_CACHE"] = str(tmp_path_factory.mktemp("lab_cache"))
    try:
        yield Lab("standin", fast=True, verbose=False)
    finally:
        if old is None:
            os.environ.pop("SAE_MINIMAL_CACHE")
        else:
            os.environ["SAE_MINIMAL_CACHE"] = old


def _make(seed):
    return sm.TopKSAE(256, 512, k=8, seed=seed)


def test_lab_trains_once_then_loads_the_same_sae(lab):
    first = lab.sae("t", _make, n_tokens=8192, progress=False)
    assert lab.run(first).history is not None and lab.run(first).path.is_dir()
    again = lab.sae("t", _make, n_tokens=8192, progress=False)
    assert lab.run(again).history is None and lab.run(again).path == lab.run(first).path
    assert torch.equal(again.W_dec, first.W_dec)
    other_seed = lab.sae("t", _make, n_tokens=8192, seed=1, progress=False)
    longer = lab.sae("t", _make, n_tokens=16384, progress=False)
    assert len({lab.run(s).path for s in (first, other_seed, longer)}) == 3, "settings must not collide"
    assert not torch.equal(other_seed.W_dec, first.W_dec)
    # AuxK off is not in cfg.json (config()), but it is in the cache key: the control is its own run
    no_auxk = lab.sae("t", lambda seed: sm.TopKSAE(256, 512, k=8, aux_coeff=0.0, seed=seed), n_tokens=8192,
                      progress=False)
    assert lab.run(no_auxk).path != lab.run(first).path and lab.run(no_auxk).history is not None
    # and the history is saved with the SAE: a later lab (or notebook) reads the curves back
    assert lab.curves(again)["fvu"] == pytest.approx(lab.run(first).history["fvu"])
    metrics = lab.evaluate(first)
    assert metrics["l0"] == pytest.approx(8.0) and 0 < metrics["fvu"] < 1 and 0 < metrics["ce_recovered"] <= 1.01


def test_lab_saes_trains_side_by_side_what_lab_sae_trains_one_at_a_time(lab):
    runs = {seed: dict(name="side", make=_make, n_tokens=8192, seed=seed) for seed in (3, 4, 5)}
    runs[6] = dict(name="side", make=_make, n_tokens=16384, seed=3)     # longer: trained first
    together = lab.saes(runs, workers=2, progress=False)
    assert list(together) == [3, 4, 5, 6] and all(lab.run(s).history is not None for s in together.values())
    assert lab.run(together[6]).history["tokens"][-1] > lab.run(together[3]).history["tokens"][-1]
    threads = torch.get_num_threads()
    for key, sae in together.items():
        torch.set_num_threads(max(threads // 2, 1))          # the threads each of the 2 workers had
        try:
            alone = lab.sae("alone", _make, n_tokens=runs[key]["n_tokens"], seed=runs[key]["seed"],
                            progress=False)                   # a new entry: trained
        finally:
            torch.set_num_threads(threads)
        assert lab.run(alone).history is not None
        assert torch.equal(alone.W_enc, sae.W_enc) and torch.equal(alone.W_dec, sae.W_dec), key
    again = lab.saes(runs, progress=False)                  # all cached now: loaded, the same folders
    assert all(lab.run(again[k]).history is None and lab.run(again[k]).path == lab.run(together[k]).path
               for k in runs)

def test_splice_eval_reuses_the_ablation_baselines_exactly(lab):
    from sae_minimal.lm.evaluation import ablation_ce, splice_eval

    sae = lab.sae("t", _make, n_tokens=8192, progress=False)
    mean = lab.eval_activations().mean(0)
    full = splice_eval(lab.model, sae, lab.hook, lab.held_out, mean_act=mean, progress=False)
    baselines = ablation_ce(lab.model, lab.hook, lab.held_out, mean)
    assert baselines == {"zero": full["ce_zero_ablated"], "mean": full["ce_mean_ablated"]}
    assert splice_eval(lab.model, sae, lab.hook, lab.held_out, mean_act=mean, progress=False,
                       ablation=baselines) == full
    # and they are what the ratio is computed from: a wrong baseline gives another ratio
    wrong = splice_eval(lab.model, sae, lab.hook, lab.held_out, mean_act=mean, progress=False,
                        ablation={"zero": baselines["zero"] + 1, "mean": baselines["mean"]})
    assert wrong["ce_loss_recovered"] > full["ce_loss_recovered"]
    assert lab.evaluate(sae)["ce_recovered"] == full["ce_loss_recovered"]


def test_lab_evaluate_reuses_the_held_out_activations_exactly(lab, monkeypatch):
    import sae_minimal.lm.evaluation as evaluation

    sae = lab.sae("t", _make, n_tokens=8192, progress=False)
    mean = lab.eval_activations().mean(0)                    # also keeps lab._held_acts
    fresh = evaluation.splice_eval(lab.model, sae, lab.hook, lab.held_out, mean_act=mean, progress=False)
    reused = evaluation.splice_eval(lab.model, sae, lab.hook, lab.held_out, mean_act=mean, progress=False,
                                    hook_acts=lab._held_acts)
    assert reused == fresh                                   # the same numbers, bit for bit
    calls = []
    monkeypatch.setattr(evaluation, "run_to_hook", lambda *a, **k: calls.append(1))
    lab._ablation_ce = None                                  # the baselines too come from the kept activations
    assert lab.evaluate(sae)["ce_recovered"] == fresh["ce_loss_recovered"]
    assert calls == [], "Lab.evaluate ran the layers before the hook again"
    with pytest.raises(ValueError, match=r"hook_acts must be the activations .* for these tokens"):
        evaluation.splice_eval(lab.model, sae, lab.hook, lab.held_out, progress=False,
                               hook_acts=lab._held_acts[:1])


def test_lab_density_is_remembered_until_the_weights_change(lab, monkeypatch):
    import sae_minimal.lm.lab as lab_module

    sae = lab.sae("t", _make, n_tokens=8192, progress=False)
    calls = []
    real = lab_module.latent_density
    monkeypatch.setattr(lab_module, "latent_density", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = lab.density(sae)
    first.zero_()                                     # the caller's copy, not the lab's
    again = lab.density(sae)
    assert len(calls) == 1 and again.sum() > 0, "the same weights must not be encoded twice"
    with torch.no_grad():
        sae.b_enc -= 100.0                            # an in-place edit: nothing fires any more
    assert float(lab.density(sae).sum()) == 0 and len(calls) == 2
    sae.b_enc.data += 100.0                           # an edit through .data, which autograd does not count
    assert torch.equal(lab.density(sae), again) and len(calls) == 3
    assert lab.density(sae, max_rows=1000).shape == again.shape and len(calls) == 4


def test_lab_evaluates_a_sae_lens_sae_as_it_evaluates_ours(lab, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    ours = lab.sae("t", _make, n_tokens=8192, progress=False)
    theirs = sae_lens.SAE.load_from_disk(str(sm.save_sae(ours, tmp_path / "ckpt")))
    assert lab.evaluate(theirs, splice=False) == pytest.approx(lab.evaluate(ours, splice=False))


def test_lab_reference_loads_on_the_stand_in_and_trains_the_recipe_elsewhere(lab, monkeypatch):
    from sae_minimal.lm import references

    if not (references.REFERENCE_DIR / references.CARD_JSON).exists():
        pytest.skip("the reference SAEs are not built in this checkout")
    assert lab.shipped_references
    sae = lab.reference("topk-k16-2048")
    assert lab.evaluate(sae, splice=False)["fvu"] < 0.2        # it reads this lab's activations
    with pytest.raises(KeyError, match="did not come from this lab"):
        lab.run(sae)                                            # loaded from the package, not trained
    monkeypatch.setattr(lab, "fingerprint", "0" * 40)           # a rebuilt stand-in: other weights
    monkeypatch.setitem(lab.size, "reference_tokens", 2048)
    assert not lab.shipped_references
    built = lab.reference("topk-k16-512")                       # the recipe, trained by this lab
    assert lab.run(built).history is not None and (built.d_sae, built.k) == (512, 16)
    assert lab.reference_seed("topk-k16-512") == references.RECIPES["topk-k16-512"][2][0]


def test_lab_moves_a_corrupt_checkpoint_aside_and_retrains(lab, capsys):
    sae = lab.sae("c", _make, n_tokens=4096, progress=False)
    (lab.run(sae).path / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    again = lab.sae("c", _make, n_tokens=4096, progress=False)
    assert lab.run(again).history is not None, "a corrupt cache entry must be retrained"
    assert "could not be loaded" in capsys.readouterr().out
    bad = lab.run(sae).path
    assert list(bad.parent.glob(bad.name + ".unreadable-*")), "the bad files are kept aside"
