"""Autointerp (notebook 08): the offline explainer finds planted triggers, the simulator reads them
back, the scores behave, the LLM clients refuse without opt-in and work through a fake client, and
the detection-score checker catches the usual mistakes."""

import math

import pytest
import torch

from sae_minimal.course import checks
from sae_minimal.lm import autointerp as ai

VOCAB = ["<bos>", " thou", " thee", "[", "Enter", " the", " king", "↵", " and", " sword"]


def planted(n=60, L=16, seed=0):
    """Contexts where a 'latent' fires on " thou"/" thee" and on the token after "["."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, len(VOCAB), (n, L), generator=gen)
    for row in range(0, n, 2):          # triggers in every other context only
        tokens[row, torch.randint(0, L - 1, (2,), generator=gen)] = torch.randint(1, 4, (2,),
                                                                                  generator=gen)
    acts = (torch.isin(tokens, torch.tensor([1, 2]))).float()
    acts[:, 1:] += (tokens[:, :-1] == 3).float()
    return ai.Contexts(tokens, acts * 2.0)


def test_explainer_finds_planted_triggers_and_simulator_reads_them():
    ctx = planted()
    exp = ai.TokenExplainer().explain(ai.top_examples(ctx, VOCAB, n_top=20))
    assert set(exp.tokens) == {"thou", "thee"} and exp.previous == ("[",)
    now, before = ai.parse_triggers(exp.text)
    assert now == {"thou", "thee"} and before == {"["}
    pred = ai.KeywordSimulator(VOCAB).predict(exp, ctx.tokens)
    assert torch.equal(pred, ctx.acts > 0)
    held = planted(seed=1)
    score = ai.score_latent(ai.TokenExplainer(), ai.KeywordSimulator(VOCAB), ctx, held, VOCAB)
    assert score.detection == 1.0 and score.fuzzing == 1.0


def test_wrong_explanation_scores_at_chance_or_below():
    held = ai.balanced_contexts(planted(seed=2), 20)
    pred = ai.KeywordSimulator(VOCAB).predict(ai.Explanation('fires on "sword"'), held.tokens)
    assert ai.detection_score(pred, held.acts) < 0.7
    # a text explanation (as an LLM writes it) is read by its quoted tokens, case-insensitively
    now, before = ai.parse_triggers('Fires on "Thou" and "THEE".\nAfter "Enter"')
    assert now == {"thou", "thee"} and before == {"enter"}


def test_scores():
    acts = torch.tensor([[0, 1.0], [0, 0], [2.0, 0], [0, 0]])
    pred = torch.tensor([[True, False], [False, False], [False, False], [True, True]])
    assert ai.detection_score(pred, acts) == pytest.approx(0.5 * (0.5 + 0.5))
    assert ai.fuzzing_score(pred, acts) == pytest.approx(0.5 * (0 + 0.5))
    assert math.isnan(ai.balanced_accuracy(torch.ones(3, dtype=torch.bool),
                                           torch.ones(3, dtype=torch.bool)))
    with pytest.raises(ValueError, match="n_contexts"):
        ai.detection_score(pred.flatten(), acts.flatten())


def test_cut_contexts_drops_bos_and_checks_shapes():
    tokens = torch.arange(2 * 33).reshape(2, 33)
    ctx = ai.cut_contexts(tokens, tokens.float(), 16)
    assert ctx.tokens.shape == (4, 16) and int(ctx.tokens[0, 0]) == 1 and int(ctx.tokens[2, 0]) == 34
    assert torch.equal(ai.cut_contexts(tokens, tokens[:, 1:].float(), 16).acts, ctx.acts)
    with pytest.raises(ValueError, match="match tokens"):
        ai.cut_contexts(tokens, tokens[:1].float())


def test_random_direction_codes_match_densities():
    x = torch.randn(5000, 8, generator=torch.Generator().manual_seed(0))
    dens = torch.tensor([0.01, 0.1, 0.3])
    codes = ai.random_direction_codes(x, dens)
    assert torch.allclose((codes > 0).float().mean(0), dens, atol=0.005)


class FakeClient:
    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def complete(self, prompt):
        self.prompts.append(prompt)
        return self.replies.pop(0)


def test_llm_explainer_and_simulator_with_a_fake_client():
    ctx = planted(n=4, L=6)
    examples = ai.top_examples(ctx, VOCAB, n_top=2, n_random=0)
    client = FakeClient(['It fires on "thou", "thee"; after "["\nextra line'])
    exp = ai.LLMExplainer(client).explain(examples)
    assert exp.text == 'It fires on "thou", "thee"; after "["'
    assert "<<" in client.prompts[0]             # firing tokens are marked for the LLM
    sim = ai.LLMSimulator(FakeClient(["1, 3", "none"]), VOCAB)
    pred = sim.predict(exp, ctx.tokens[:2])
    assert pred[0].nonzero().flatten().tolist() == [1, 3] and not pred[1].any()


def test_web_clients_need_opt_in_and_key(monkeypatch):
    monkeypatch.delenv("SAE_MINIMAL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(PermissionError, match="allow_network=True"):
        ai.AnthropicClient("claude")
    with pytest.raises(PermissionError, match="ANTHROPIC_API_KEY"):
        ai.AnthropicClient("claude", allow_network=True)
    monkeypatch.setenv("SAE_MINIMAL_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(PermissionError, match="OFFLINE"):
        ai.OpenAIClient("gpt", allow_network=True)


def test_explainer_refuses_no_examples():
    with pytest.raises(ValueError, match="never fired"):
        ai.TokenExplainer().explain([])


def test_check_detection_score():
    checks.check_detection_score(ai.detection_score)

    def fails(fn, hint):
        with pytest.raises(AssertionError, match=hint):
            checks.check_detection_score(fn)
    fails(lambda p, a: float((p.any(1) == (a > 0).any(1)).float().mean()), "plain accuracy")
    fails(lambda p, a: ai.balanced_accuracy(p.flatten(), (a > 0).flatten()), "single tokens")
    fails(lambda p, a: float(p.any(1)[(a > 0).any(1)].float().mean()), "true-positive rate")
    fails(lambda p, a: ai.balanced_accuracy(p.any(1), (a != 0).any(1)), "acts > 0")
    fails(lambda p, a: ai.balanced_accuracy(p.any(1), (a >= 0).any(1)), "returned NaN")


def test_score_codes_scores_sae_latents_and_controls_alike():
    ctx = planted(n=40, L=17)
    tokens = torch.cat([torch.zeros(40, 1, dtype=torch.long), ctx.tokens], 1)   # BOS first
    codes = torch.stack([ctx.acts.flatten(), torch.zeros(40 * 17)], 1)         # a latent, a dead one
    res = ai.score_codes(codes, tokens, codes, tokens, VOCAB, length=17)
    assert res[0].detection == 1.0 and math.isnan(res[1].detection)
    dens = torch.tensor([0.0, 0.5, 1e-3, 0.2])
    assert ai.sample_alive(dens, 5, min_density=1e-2).tolist() == [1, 3]
