"""train_sae(checkpoint=...): a run killed part-way and resumed ends with the SAE an uninterrupted
run gives, bit for bit on the CPU; a checkpoint of another run, or a broken one, is refused."""

import pytest
import torch

import sae_minimal as sm
import sae_minimal.train as train_module

# one variant per kind of state the loop carries: AuxK's firing counters (TopK), a running
# threshold buffer (BatchTopK), the STE threshold and the resampling generator (JumpReLU)
CASES = [
    (sm.TopKSAE, {"d_sae": 512, "k": 1, "dead_window": 1024}, {}),   # half of them dead
    (sm.BatchTopKSAE, {"k": 4}, {}),
    (sm.JumpReLUSAE, {"l0_coeff": 0.1}, {"resample_every": 4096, "dead_window": 1024}),
]


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return 5.0 * torch.randn(3000, 16, generator=g) + 2.0   # 11 batches of 256 per epoch


def _train(cls, kw, settings, **extra):
    sae = cls(16, seed=3, **{"d_sae": 64, **kw})
    hist = sm.train_sae(sae, _data(), n_tokens=40 * 256, batch_size=256, seed=5, progress=False,
                        log_every=3, **settings, **extra)
    return sae, hist


def _killed_at(monkeypatch, step):
    """Make the run stop with a KeyboardInterrupt in its ``step``-th step (0-based), as a killed
    process would, after the checkpoint of the step before."""
    calls = {"n": 0}
    sound = train_module.step_is_sound

    def interrupt(*args):
        calls["n"] += 1
        if calls["n"] > step:
            raise KeyboardInterrupt
        return sound(*args)
    monkeypatch.setattr(train_module, "step_is_sound", interrupt)


@pytest.mark.parametrize("cls,kw,settings", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, cls, kw, settings):
    straight, hist_straight = _train(cls, kw, settings)
    path = tmp_path / "run.pt"
    with monkeypatch.context() as m:
        _killed_at(m, 23)          # 23 steps done: two epochs and one batch into the third
        with pytest.raises(KeyboardInterrupt):
            _train(cls, kw, settings, checkpoint=path, checkpoint_every=0)
    assert path.exists()
    resumed, hist_resumed = _train(cls, kw, settings, checkpoint=path)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert torch.equal(straight.tokens_since_fired, resumed.tokens_since_fired)
    assert resumed.trained_tokens == straight.trained_tokens == 40 * 256
    for key in hist_straight:
        if key not in ("seconds", "data_seconds"):
            assert hist_straight[key] == hist_resumed[key], key
    assert not path.exists()       # finished: the checkpoint is gone


def test_a_checkpoint_of_another_run_is_refused_and_kept(tmp_path, monkeypatch):
    cls, kw, settings = CASES[0]
    path = tmp_path / "run.pt"
    with monkeypatch.context() as m:
        _killed_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            _train(cls, kw, settings, checkpoint=path, checkpoint_every=0)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"belongs to another run \(lr_decay_frac"):
        _train(cls, kw, {"lr_decay_frac": 0.5}, checkpoint=path)
    sae = cls(16, seed=4, **kw)                                   # another initialisation
    with pytest.raises(ValueError, match="W_dec_sum"):
        sm.train_sae(sae, _data(), n_tokens=40 * 256, batch_size=256, seed=5, progress=False,
                     log_every=3, checkpoint=path)
    assert path.read_bytes() == before     # nothing the user saved is overwritten


def test_a_broken_checkpoint_and_an_iterator_get_clear_errors(tmp_path):
    cls, kw, settings = CASES[0]
    path = tmp_path / "run.pt"
    path.write_bytes(b"half a file")
    with pytest.raises(ValueError, match="cannot be read.*delete it to train from the start"):
        _train(cls, kw, settings, checkpoint=path)
    with pytest.raises(ValueError, match=r"checkpoint_every must be a number of seconds >= 0"):
        _train(cls, kw, settings, checkpoint=tmp_path / "new.pt", checkpoint_every=-1)
    with pytest.raises(ValueError, match="needs the activations as one tensor"):
        sm.train_sae(sm.TopKSAE(16, 64, k=4), iter(_data().split(256)), checkpoint=path,
                     progress=False)


def test_batches_skip_continues_the_same_order():
    x = torch.arange(50.0)[:, None]
    full = train_module._batches(x, 8, seed=1)           # 6 batches per epoch
    expected = [next(full) for _ in range(20)][13:]
    skipped = train_module._batches(x, 8, seed=1, skip=13)
    assert all(torch.equal(a, next(skipped)) for a in expected)
