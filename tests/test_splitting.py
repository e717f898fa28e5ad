"""Feature-splitting measurements (sae_minimal.lm.splitting) and notebook 06's checkers: sparse
firing sets, firing precision / recall / F1 against a dense count, the context summary, and that each
checker accepts a right answer and names the mistake in wrong ones."""

import pytest
import torch
import torch.nn.functional as F

import sae_minimal as sm
from sae_minimal.course.checks import (CheckFailed, check_firing_precision_recall,
                                       check_match_latents)
from sae_minimal.lm.splitting import (encode_sparse, firing_overlap, precision_recall,
                                      token_shares)


class _Fixed:
    """A stand-in 'SAE' whose latents are given columns of x (firing where positive)."""

    def __init__(self, columns):
        self.columns, self.d_sae = columns, len(columns)

    def encode(self, x):
        return x[:, self.columns].relu()


@pytest.fixture(scope="module")
def two_saes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 16, generator=gen)
    return x, sm.TopKSAE(16, 32, k=4, seed=0).eval(), sm.TopKSAE(16, 64, k=4, seed=1).eval()


def test_encode_sparse_keeps_exactly_the_active_latents(two_saes):
    x, a, _ = two_saes
    codes = encode_sparse(a, x, chunk=700)                 # chunks that do not divide N
    with torch.no_grad():
        dense = a.encode(x)
    assert codes.n_tokens == len(x) and codes.d_sae == 32
    assert torch.equal(codes.counts(), (dense > 0).sum(0))
    rebuilt = torch.zeros_like(dense)
    rebuilt[codes.rows, codes.latents] = codes.values
    torch.testing.assert_close(rebuilt, dense)
    values, rows = codes.top(5, n=3)
    torch.testing.assert_close(values, dense[:, 5].topk(3).values)
    assert torch.equal(dense[rows, 5], values)


def test_firing_overlap_known_answer_with_repeated_latents_and_silent_ones():
    x = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, 1.0, -1.0]])
    codes_p = encode_sparse(_Fixed([0, 0]), x)             # p0 = p1 fire on rows 0, 1, 2
    codes_q = encode_sparse(_Fixed([1, 2]), x)             # q0 fires on rows 0, 2, 3; q1 never
    o = firing_overlap(codes_p, [0, 1, 0], codes_q, [0, 0, 1])
    assert o.recall[:2].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert o.precision[:2].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert o.f1[0] == pytest.approx(2 * 2 / (3 + 3))
    assert o.recall[2] == 0 and torch.isnan(o.precision[2])   # q1 never fires: precision 0/0
    assert o.n_p.tolist() == [3, 3, 3] and o.n_q.tolist() == [3, 3, 0]


def test_firing_overlap_matches_a_dense_count(two_saes):
    x, a, b = two_saes
    gen = torch.Generator().manual_seed(2)
    la, lb = torch.randint(0, 32, (50,), generator=gen), torch.randint(0, 64, (50,), generator=gen)
    o = firing_overlap(encode_sparse(a, x), la, encode_sparse(b, x), lb)
    with torch.no_grad():
        fa, fb = a.encode(x)[:, la] > 0, b.encode(x)[:, lb] > 0
    precision, recall = precision_recall(fa, fb)
    torch.testing.assert_close(o.recall, recall, equal_nan=True)
    torch.testing.assert_close(o.precision, precision, equal_nan=True)
    both = (fa & fb).sum(0).float()
    torch.testing.assert_close(o.f1, 2 * both / (fa.sum(0) + fb.sum(0)).float(), equal_nan=True)


def test_a_child_has_precision_one_and_a_dense_latent_recall_one():
    fires_p = torch.tensor([[1, 1], [1, 1], [1, 0], [0, 0]], dtype=torch.bool)
    fires_q = torch.tensor([[1, 1], [0, 1], [0, 1], [0, 1]], dtype=torch.bool)
    precision, recall = precision_recall(fires_p, fires_q)
    assert precision.tolist() == pytest.approx([1.0, 0.5])   # column 0: q a subset of p
    assert recall.tolist() == pytest.approx([1 / 3, 1.0])    # column 1: q fires everywhere


def test_splitting_errors_say_what_to_pass(two_saes):
    x, a, b = two_saes
    ca, cb = encode_sparse(a, x), encode_sparse(b, x[:100])
    with pytest.raises(ValueError, match="same activations"):
        firing_overlap(ca, [0], cb, [0])
    with pytest.raises(ValueError, match="pair up one to one"):
        firing_overlap(ca, [0, 1], encode_sparse(b, x), [0])
    with pytest.raises(ValueError, match="d_sae=32"):
        firing_overlap(ca, [40], encode_sparse(b, x), [0])
    with pytest.raises(ValueError, match=r"\[N, d_in\]"):
        encode_sparse(a, x.reshape(30, 100, 16))
    with pytest.raises(ValueError, match="same shape"):
        precision_recall(torch.ones(4, 2, dtype=torch.bool), torch.ones(4, 3, dtype=torch.bool))


def test_token_shares_counts_the_token_and_the_one_before():
    tokens = torch.tensor([[0, 5, 7, 9], [0, 5, 7, 8], [0, 6, 7, 9]])
    shares = token_shares(tokens, torch.tensor([[0, 2], [1, 2], [2, 2], [0, 3]]))
    assert shares["token"] == (7, pytest.approx(0.75))
    assert shares["previous"] == (5, pytest.approx(0.5))
    with pytest.raises(ValueError, match="previous token"):
        token_shares(tokens, torch.tensor([[0, 0]]))


def test_matryoshka_reference_prefixes_are_the_topk_widths():
    """Notebook 06 compares the Matryoshka reference's prefixes with the 512/2048-wide TopK ones."""
    from sae_minimal.lm.references import load_reference

    assert load_reference("matryoshka-k16-8192").prefix_sizes == [512, 2048, 8192]


# --- the checkers -------------------------------------------------------------------------------------
def _cosines(W_a, W_b):
    return F.normalize(W_a, dim=-1) @ F.normalize(W_b, dim=-1).T


MATCH_MISTAKES = {
    "(indices, cosines)": lambda W_a, W_b: tuple(reversed(_cosines(W_a, W_b).max(1))),
    "raw dot product": lambda W_a, W_b: (W_a @ W_b.T).max(1),
    r"\|cos\|": lambda W_a, W_b: _cosines(W_a, W_b).abs().max(1),
    "only one of W_a, W_b": lambda W_a, W_b: (W_a @ F.normalize(W_b, dim=-1).T).max(1),
    "one per row of W_b": lambda W_a, W_b: _cosines(W_a, W_b).max(0),
}


def test_check_match_latents_passes_a_right_answer(capsys):
    check_match_latents(lambda W_a, W_b: tuple(_cosines(W_a, W_b).max(1)))
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("message", MATCH_MISTAKES)
def test_check_match_latents_names_the_mistake(message):
    with pytest.raises(CheckFailed, match=message):
        check_match_latents(MATCH_MISTAKES[message])


def _right_precision_recall(p, q):
    both, n_p, n_q = (p & q).sum(0).float(), p.sum(0).float(), q.sum(0).float()
    nan = torch.tensor(float("nan"))
    return torch.where(n_q > 0, both / n_q, nan), torch.where(n_p > 0, both / n_p, nan)


PR_MISTAKES = {
    "swapped": lambda p, q: tuple(reversed(_right_precision_recall(p, q))),
    "number of tokens N": lambda p, q: ((p & q).float().mean(0),) * 2,
    "Jaccard": lambda p, q: ((p & q).sum(0) / (p | q).sum(0),) * 2,
    "Return NaN there": lambda p, q: tuple(t.nan_to_num(0) for t in _right_precision_recall(p, q)),
    "when p never fires": lambda p, q: (_right_precision_recall(p, q)[0],
                                        _right_precision_recall(p, q)[1].nan_to_num(0)),
}


def test_check_firing_precision_recall_passes_a_right_answer(capsys):
    check_firing_precision_recall(_right_precision_recall)
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("message", PR_MISTAKES)
def test_check_firing_precision_recall_names_the_mistake(message):
    with pytest.raises(CheckFailed, match=message):
        check_firing_precision_recall(PR_MISTAKES[message])
