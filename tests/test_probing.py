"""Sparse probing (notebook 08): labels come out of the text, the k-sparse selection and the probe
find a planted feature, and the checker catches the usual mistakes."""

import pytest
import torch

from sae_minimal.course import checks
from sae_minimal.lm import probing as pr

TEXT = ("]\nHAMLET.\nThou art a king,\nand thy sword is mine.\n\n[Enter GHOST.]\n\nHor.\nO!\n")


def tokens_of(text):
    """Characters as tokens: vocab = the distinct characters (newline shown as ↵)."""
    chars = sorted(set(text))
    vocab = ["<bos>"] + [("↵" if c == "\n" else c) for c in chars]
    ids = [0] + [1 + chars.index(c) for c in text]
    return vocab, torch.tensor([ids])


def test_property_labels_from_text():
    vocab, tokens = tokens_of(TEXT)
    labels = pr.property_labels(vocab, tokens)
    text = "x" + TEXT   # position 0 is BOS
    marked = {p: "".join(text[i] for i in labels[p][0].nonzero().flatten().tolist())
              for p in labels}
    assert marked["speaker_name"] == "HAMLETHor"
    assert "[EnterGHOST.]" == marked["stage_direction"].replace(" ", "")[1:]  # leading "]" too
    assert marked["stage_direction"][0] == "]"     # the window began inside a bracket
    assert marked["line_start"] == "TaO"
    assert not labels["archaic_you"].any()         # single characters are never "thou"
    vocab2 = ["<bos>", "↵", "Thou", " art", " thy", " thee", " sword"]
    lab2 = pr.property_labels(vocab2, torch.tensor([[0, 1, 2, 3, 4, 6, 5]]))
    assert lab2["archaic_you"][0].tolist() == [False, False, True, False, True, False, True]


def test_top_k_and_probe_find_the_planted_feature():
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(2000, generator=gen) < 0.2
    X = torch.randn(2000, 20, generator=gen)
    X[:, 13] -= 2.0 * y
    assert pr.top_k_features(X, y, 1).tolist() == [13]
    probe = pr.fit_probe(X, y)
    assert pr.balanced_accuracy(probe.predict(X), y) > 0.8
    assert abs(float(probe.direction()[13])) > 0.9
    acc = pr.sparse_probe_accuracy(X[:1000], y[:1000], X[1000:], y[1000:], 1)
    assert acc > 0.8
    with pytest.raises(ValueError, match="both classes"):
        pr.top_k_features(X, torch.zeros(2000, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="k must be"):
        pr.top_k_features(X, y, 0)


def test_check_top_k_features():
    checks.check_top_k_features(pr.top_k_features)

    def fails(fn, hint):
        with pytest.raises(AssertionError, match=hint):
            checks.check_top_k_features(fn)
    fails(lambda X, y, k: (X[y].mean(0) - X[~y].mean(0)).abs().topk(k).indices, "raw mean")
    fails(lambda X, y, k: ((X[y].mean(0) - X[~y].mean(0)) / X.std(0)).topk(k).indices, "sign")
    fails(lambda X, y, k: ((X[y].mean(0) - X[~y].mean(0)).abs() / X.std(0)).topk(k).values,
          "indices")


@pytest.mark.parametrize("variant", ["topk", "relu", "jumprelu"])
def test_streamed_sae_scores_match_top_k_features(variant):
    import sae_minimal as sm
    sae = {"topk": lambda: sm.TopKSAE(8, 32, k=4, seed=0), "relu": lambda: sm.ReLUSAE(8, 32, seed=0),
           "jumprelu": lambda: sm.JumpReLUSAE(8, 32, seed=0)}[variant]()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 8, generator=gen)
    y = x[:, 0] > 0.5
    scores = pr.sae_feature_scores(sae, x, {"p": y}, chunk=700)["p"]
    codes = sae.encode(x).detach()
    want = (codes[y].mean(0) - codes[~y].mean(0)).abs() / (codes.std(0) + 1e-6)
    assert torch.allclose(scores, want, atol=1e-4)
    assert set(scores.topk(3).indices.tolist()) == set(pr.top_k_features(codes, y, 3).tolist())
