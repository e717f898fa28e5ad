"""The CE-loss-recovered exercise of notebook 04 part 2 (issue 15, item 7): its checker passes an
answer computed by the package's ``splice_eval``, and fails each mistake a learner makes with the
hint for it, on the stand-in and a shipped reference SAE (offline)."""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("transformer_lens")

from sae_minimal.course import checks  # noqa: E402
from sae_minimal.course.checks import CheckFailed, check_ce_loss_recovered  # noqa: E402
from sae_minimal.lm.evaluation import splice_eval  # noqa: E402
from sae_minimal.lm.models import load_standin  # noqa: E402
from sae_minimal.lm.references import load_reference  # noqa: E402
from sae_minimal.lm.text import load_tokens  # noqa: E402

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def setup():
    model = load_standin()
    return model, load_reference("topk-k16-512"), load_tokens(model, 4, split="held_out")


def answer(model, sae, hook_name, tokens, *, touch_bos=False, columns=slice(1, None),
           baseline="zero", returns=True, formula="right", strip_bos=False, per_window=False):
    """A learner's answer, with switches for the mistakes: written with ``model.hooks`` and a
    plain forward, not the checker's ``run_with_hooks``."""
    first = 0 if touch_bos else 1
    mean = None
    if baseline == "mean":
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        mean = cache[hook_name][:, 1:].flatten(0, 1).mean(0)

    def ce(new=None):
        def hook(act, hook):
            out = act.clone()
            out[:, first:] = new(act)[:, first:]
            return out if returns else None
        with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name, hook)] if new else []):
            loss = model(tokens, return_type="loss", loss_per_token=True)
        return loss[:, columns].mean().item()

    if strip_bos:
        tokens = tokens[:, 1:]
    if per_window:    # the mean of each window's answer: recovered becomes a mean of ratios
        rows = [answer(model, sae, hook_name, tokens[i:i + 1]) for i in range(len(tokens))]
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}

    zero_fn = torch.zeros_like if baseline == "zero" else (lambda a: mean.expand_as(a))
    c, s, z = ce(), ce(lambda a: sae(a).x_hat), ce(zero_fn)
    gap = z - c if returns else float("nan")     # no gap when the hook changes nothing
    recovered = {"right": (z - s) / gap, "inverted": (s - c) / gap,
                 "over zero": (z - s) / z, "ratio": c / s, "delta": s - c}[formula]
    return {"clean": c, "spliced": s, "zero": z, "recovered": recovered}


def test_checker_agrees_with_splice_eval(setup, capsys):
    model, sae, tokens = setup
    ref = splice_eval(model, sae, HOOK, tokens, progress=False)

    def via_splice_eval(model, sae, hook_name, tokens):
        r = splice_eval(model, sae, hook_name, tokens, progress=False)
        return {"clean": r["ce_clean"], "spliced": r["ce_spliced"], "zero": r["ce_zero_ablated"],
                "recovered": r["ce_loss_recovered"]}

    check_ce_loss_recovered(via_splice_eval, model, sae, HOOK, tokens)
    out = capsys.readouterr().out
    assert out.startswith("PASSED check_ce_loss_recovered")
    assert f"recovered {ref['ce_loss_recovered']:.3f}" in out
    check_ce_loss_recovered(answer, model, sae, HOOK, tokens)
    assert capsys.readouterr().out.startswith("PASSED")
    # the checker's own reference is splice_eval's numbers
    for key, ref_key in (("clean", "ce_clean"), ("spliced", "ce_spliced")):
        assert abs(answer(model, sae, HOOK, tokens)[key] - ref[ref_key]) < 1e-4


@pytest.mark.parametrize("kw, hint", [
    (dict(columns=slice(None)), "prediction made at BOS"),
    (dict(columns=slice(None, -1)), "drops the last column"),
    (dict(strip_bos=True), "tokens without their BOS"),
    (dict(per_window=True), "a ratio of means"),
    (dict(touch_bos=True), "also replaced position 0"),
    (dict(baseline="mean"), "*mean*-ablated"),
    (dict(returns=False), "did not change the activation"),
    (dict(formula="inverted"), "1 - recovered"),
    (dict(formula="over zero"), "divide by the gap"),
    (dict(formula="ratio"), "not clean / spliced"),
    (dict(formula="delta"), "that is ΔCE"),
])
def test_each_mistake_gets_its_hint(setup, kw, hint):
    model, sae, tokens = setup
    with pytest.raises(CheckFailed, match="check_ce_loss_recovered") as err:
        check_ce_loss_recovered(lambda *a: answer(*a, **kw), model, sae, HOOK, tokens)
    assert hint in str(err.value)


def test_results_in_the_wrong_form(setup):
    model, sae, tokens = setup
    with pytest.raises(CheckFailed, match="keys 'clean', 'spliced', 'zero'"):
        check_ce_loss_recovered(lambda *a: {"clean": 1.0}, model, sae, HOOK, tokens)
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        check_ce_loss_recovered(lambda *a: (_ for _ in ()).throw(NotImplementedError()),
                                model, sae, HOOK, tokens)

    def spliced_is_zero(*a):
        right = answer(*a)
        return {**right, "spliced": right["zero"]}
    with pytest.raises(CheckFailed, match="equals the zero-ablated one"):
        check_ce_loss_recovered(spliced_is_zero, model, sae, HOOK, tokens)


def test_a_hook_left_on_the_model_is_caught_and_removed(setup):
    model, sae, tokens = setup

    def leaves_a_hook(model, sae, hook_name, tokens):
        model.add_hook(hook_name, lambda act, hook: act)
        return answer(model, sae, hook_name, tokens)
    with pytest.raises(CheckFailed, match="left a hook attached"):
        check_ce_loss_recovered(leaves_a_hook, model, sae, HOOK, tokens)
    assert checks._n_hooks(model) == 0


def test_changed_weights_are_caught(setup):
    model, sae, tokens = setup
    weight = model.blocks[3].mlp.W_out
    saved = weight.detach().clone()

    def scales_a_weight(model, sae, hook_name, tokens):
        with torch.no_grad():
            model.blocks[3].mlp.W_out.mul_(2.0)
        return answer(model, sae, hook_name, tokens)
    try:
        with pytest.raises(CheckFailed, match="changed the model's weights"):
            check_ce_loss_recovered(scales_a_weight, model, sae, HOOK, tokens)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_a_function_that_never_returns_is_stopped(setup, monkeypatch):
    model, sae, tokens = setup
    monkeypatch.setattr(checks, "CALL_TIMEOUT_S", 0.2)

    def spin(*args):
        while True:
            time.sleep(0.01)
    t0 = time.perf_counter()
    with pytest.raises(CheckFailed, match="did not return within 0.2 s"):
        check_ce_loss_recovered(spin, model, sae, HOOK, tokens)
    # stopped, not hung: spin never returns, so any finite bound tells; a loose one, because the
    # checker's own forward passes take seconds on a loaded 2-core machine (5.7 s seen under CI)
    assert time.perf_counter() - t0 < 120


def test_a_division_by_zero_in_the_answer_is_explained(setup):
    model, sae, tokens = setup

    def divides(*a):
        right = answer(*a, returns=False)
        return {**right, "recovered": 1 / (right["zero"] - right["clean"])}
    with pytest.raises(CheckFailed, match="divided by zero: .* Does your hook return"):
        check_ce_loss_recovered(divides, model, sae, HOOK, tokens)


def test_numpy_and_tensor_numbers_are_accepted(setup, capsys):
    np = pytest.importorskip("numpy")
    model, sae, tokens = setup
    check_ce_loss_recovered(lambda *a: {k: np.float32(v) if k == "recovered" else torch.tensor(v)
                                        for k, v in answer(*a).items()},
                            model, sae, HOOK, tokens)
    assert capsys.readouterr().out.startswith("PASSED")
    with pytest.raises(CheckFailed, match="return a float, got str"):
        check_ce_loss_recovered(lambda *a: {**answer(*a), "zero": "8.9"}, model, sae, HOOK, tokens)
