"""Fault injection for the language-model tools (issue 14): caches that must not lie or lose data
(kill -9 mid-write, interrupted overwrites, deleted shards, same-named models, bad or raced lab
entries), evaluation that must refuse the wrong question (SAE width, offline GPT-2, devices), and
errors that must say what to fix (hook typos, token ids, latents as tensors, NaN steering).

Tiny random models (1 layer, d_model 16, vocabulary 50) keep every test to seconds; the kill -9 and
two-writer tests run real subprocesses.
"""

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import sae_minimal as sm

pytest.importorskip("transformer_lens")

from sae_minimal.lm import activations as act_mod
from sae_minimal.lm import cachefiles  # noqa: E402
from sae_minimal.lm import lab as lab_mod  # noqa: E402
from sae_minimal.lm import models  # noqa: E402
from sae_minimal.lm.activations import ActivationStore, cache_activations, run_to_hook  # noqa: E402
from sae_minimal.lm.dashboard import LatentContext, feature_dashboard  # noqa: E402
from sae_minimal.lm.evaluation import per_token_ce, splice_eval  # noqa: E402
from sae_minimal.lm.steering import (ablation_effect, clean_token_ce, concept_logprob,  # noqa: E402
                                     continuation_loss, generate, logit_effect_z)
from sae_minimal.lm.validate import check_latent, model_device  # noqa: E402

HOOK = "blocks.0.hook_resid_post"
HERE = Path(__file__).resolve()


def _tiny(seed: int = 0):
    """A random 1-layer transformer (d_model 16, vocabulary 50, context 16) named 'custom'."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16,
                                  d_vocab=50, act_fn="gelu_new", normalization_type="LN",
                                  seed=seed)
    return HookedTransformer(cfg).eval()


def _tokens(n: int = 24) -> torch.Tensor:
    t = torch.randint(1, 50, (n, 16), generator=torch.Generator().manual_seed(0))
    t[:, 0] = 0   # BOS
    return t


@pytest.fixture(scope="module")
def tiny():
    return _tiny(0)


@pytest.fixture(scope="module")
def toks():
    return _tokens()


def _cache(model, path, hook=HOOK, **kw):
    return cache_activations(model, hook, _tokens(), path, batch_size=2, shard_rows=30,
                             progress=False, **kw)


def _load_this_module():
    spec = importlib.util.spec_from_file_location("faults_lm", HERE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spawn(tmp_path: Path, body: str, *args: str) -> subprocess.Popen:
    """Run ``body`` in a fresh Python with this file importable as ``faults``."""
    script = tmp_path / f"child_{time.time_ns()}.py"
    script.write_text("import importlib.util, sys, time, json\n"
                      f"spec = importlib.util.spec_from_file_location('faults', {str(HERE)!r})\n"
                      "faults = importlib.util.module_from_spec(spec)\n"
                      "spec.loader.exec_module(faults)\n" + body)
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# A child that caches slowly (0.3 s per 2-window batch, one shard per batch) so it can be killed.
SLOW_CACHE = """
from sae_minimal.lm import activations as act
rows = act._Job.rows
act._Job.rows = lambda self, b: (time.sleep(0.3), rows(self, b))[1]
faults._cache(faults._tiny(0), sys.argv[1], hook=sys.argv[2], overwrite=sys.argv[3] == '1')
"""


def _same_rows(got: torch.Tensor, expected: torch.Tensor) -> None:
    """The same rows in the same order. Rows computed in another process may differ in the last
    bit (CPU matrix kernels pick their blocking by load), hence the tolerance."""
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _kill_after_first_shard(proc: subprocess.Popen, folder: Path) -> None:
    """SIGKILL ``proc`` as soon as ``folder``'s meta.json lists a shard (mid-run)."""
    deadline = time.time() + 120
    while time.time() < deadline:
        meta = folder / "meta.json"
        if meta.exists() and json.loads(meta.read_text())["shards"]:
            break
        if proc.poll() is not None:
            pytest.fail(f"the child ended before it could be killed: {proc.communicate()[1]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


# --- caches that must not lie or lose data --------------------------------------------------------
def test_kill9_mid_write_then_resume_gives_exactly_the_uninterrupted_rows(tiny, tmp_path):
    proc = _spawn(tmp_path, SLOW_CACHE, str(tmp_path / "c"), HOOK, "0")
    _kill_after_first_shard(proc, tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert not meta["complete"] and 0 < meta["done_batches"] < 12, "killed mid-run"
    with pytest.raises(ValueError, match="incomplete"):
        ActivationStore(tmp_path / "c")
    resumed = _cache(tiny, tmp_path / "c")
    whole = _cache(tiny, tmp_path / "whole")
    assert len(resumed) == len(whole) == 24 * 15
    _same_rows(resumed.load_all(), whole.load_all())
    assert not list((tmp_path / "c").glob("*.tmp")), "half-written files are cleaned up"


def test_kill9_during_overwrite_keeps_the_old_cache_until_the_new_one_is_complete(tiny, tmp_path):
    path, other = tmp_path / "c", "blocks.0.hook_resid_mid"
    old_rows = _cache(tiny, path).load_all()
    proc = _spawn(tmp_path, SLOW_CACHE, str(path), other, "1")
    _kill_after_first_shard(proc, cachefiles.sibling(path, "overwrite"))
    survivor = ActivationStore(path)                       # opens, complete, every shard there
    assert survivor.meta["hook_name"] == HOOK and torch.equal(survivor.load_all(), old_rows)
    assert torch.equal(_cache(tiny, path).load_all(), old_rows), "the old cache is still served"
    new = _cache(tiny, path, hook=other, overwrite=True)   # resumes the replacement, then swaps
    assert new.meta["hook_name"] == other
    _same_rows(new.load_all(), _cache(tiny, tmp_path / "ref", hook=other).load_all())
    assert not cachefiles.sibling(path, "overwrite").exists()
    assert not cachefiles.sibling(path, "replaced").exists()


def test_a_crash_between_the_swap_renames_is_finished_on_the_next_open(tiny, tmp_path,
                                                                        monkeypatch):
    path, other = tmp_path / "c", "blocks.0.hook_resid_mid"
    path.mkdir()
    (path / "notes.txt").write_text("mine")                # a user's file in the folder
    _cache(tiny, path)
    real = os.replace

    def crash_after_moving_the_old_folder_aside(src, dst):
        real(src, dst)
        if str(dst).endswith(".replaced"):
            raise KeyboardInterrupt

    monkeypatch.setattr(act_mod.os, "replace", crash_after_moving_the_old_folder_aside)
    with pytest.raises(KeyboardInterrupt):
        _cache(tiny, path, hook=other, overwrite=True)
    monkeypatch.setattr(act_mod.os, "replace", real)
    assert not path.exists()                               # the crash left the swap half done
    store = ActivationStore(path)
    assert store.meta["hook_name"] == other
    assert torch.equal(store.load_all(), _cache(tiny, tmp_path / "ref", hook=other).load_all())
    assert (path / "notes.txt").read_text() == "mine", "nothing a user saved is lost"


def test_a_corrupt_meta_is_refused_then_replaced_by_overwrite(tiny, tmp_path):
    rows = _cache(tiny, tmp_path).load_all()
    (tmp_path / "meta.json").write_text('{"model": "custom", "shards": [')   # cut off mid-write
    with pytest.raises(ValueError, match="corrupt.*overwrite=True"):
        _cache(tiny, tmp_path)
    assert torch.equal(_cache(tiny, tmp_path, overwrite=True).load_all(), rows)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[:2] == ["meta.json", "shard_00000.safetensors"] and len(names) == 13


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-40])


def _fewer_rows(file: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file({"activations": load_file(str(file))["activations"][:5].contiguous()}, str(file))


@pytest.mark.parametrize("damage, says", [(Path.unlink, "is missing"),
                                          (_truncate, "is unreadable"),
                                          (_fewer_rows, "holds shape")])
def test_a_damaged_shard_is_named_on_open_and_rebuilt_by_cache_activations(tiny, tmp_path,
                                                                           damage, says):
    rows = _cache(tiny, tmp_path).load_all()
    damage(tmp_path / "shard_00003.safetensors")
    with pytest.raises(ValueError, match=rf"shard_00003.safetensors {says}.*cache_activations"):
        ActivationStore(tmp_path)
    assert torch.equal(_cache(tiny, tmp_path).load_all(), rows)
    assert torch.equal(ActivationStore(tmp_path).load_all(), rows)


def test_two_models_with_one_name_never_share_a_cache(tmp_path):
    a, b = _tiny(0), _tiny(1)
    assert models.lm_name(a) == models.lm_name(b) == "custom"
    assert models.fingerprint(a) != models.fingerprint(b)
    assert models.fingerprint(a) == models.fingerprint(_tiny(0)), "same weights, same key"
    _cache(a, tmp_path)
    with pytest.raises(FileExistsError, match="same name 'custom'.*fingerprint"):
        _cache(b, tmp_path)
    with torch.no_grad():
        a.blocks[0].mlp.W_out[3, 2] += 1.0                 # one weight edited in place
    with pytest.raises(FileExistsError, match="fingerprint"):
        _cache(a, tmp_path)


def test_gpt2_shaped_models_with_different_seeds_have_different_fingerprints():
    one, two = models.gpt2_shaped(n_layers=1, seed=0), models.gpt2_shaped(n_layers=1, seed=1)
    assert models.lm_name(one) == models.lm_name(two)
    assert models.fingerprint(one) != models.fingerprint(two)


def test_a_second_writer_waits_for_the_lock(tmp_path, capsys):
    lock, order, entered = tmp_path / ".c.lock", [], threading.Event()

    def first():
        with cachefiles.file_lock(lock, "caching"):
            entered.set()
            time.sleep(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait()
    with cachefiles.file_lock(lock, "caching"):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]
    assert "Waiting for another process" in capsys.readouterr().out


# --- the lab ------------------------------------------------------------------------------------
def _patch_lab(set_attr, set_item, model, cache: Path) -> None:
    """Make ``Lab(...)`` build around ``model`` and this file's tokens, caching under ``cache``
    (``set_attr``/``set_item``: monkeypatch's in tests, plain setattr/setitem in children)."""
    set_attr(lab_mod, "load_lm", lambda name, device="cpu", verbose=True: model.to(device))
    set_attr(lab_mod, "load_tokens", lambda model, n, split="train", **kw: _tokens())
    set_attr(lab_mod, "cache_dir", lambda: cache)
    set_item(lab_mod.HOOKS, "custom", HOOK)


def _make(seed):
    return sm.TopKSAE(16, 32, k=4, seed=seed)


TRAIN = {"n_tokens": 1024, "batch_size": 128, "progress": False}


@pytest.fixture
def lab(tmp_path, monkeypatch):
    _patch_lab(monkeypatch.setattr, monkeypatch.setitem, _tiny(0), tmp_path / "cache")
    return lab_mod.Lab(fast=True, verbose=False)


def test_the_lab_folder_is_keyed_by_the_weights(tmp_path, monkeypatch):
    folders = []
    for seed in (0, 1):
        _patch_lab(monkeypatch.setattr, monkeypatch.setitem, _tiny(seed), tmp_path)
        folders.append(lab_mod.Lab(fast=True, verbose=False).root)
    assert folders[0] != folders[1]


def _set(key, value):
    def edit(cfg):
        cfg[key] = value
    return edit


def _nan_weights(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path / "sae_weights.safetensors"))
    weights["W_dec"][0, 0] = float("nan")
    save_file(weights, str(path / "sae_weights.safetensors"))


BAD_ENTRIES = {
    "k is text": _set("k", "sixteen"),
    "negative d_sae": _set("d_sae", -4),
    "architecture is a number": _set("architecture", 7),
    "metadata is text": _set("metadata", "oops"),
    "bad class config": _set("metadata", {"sae_minimal_class": "TopKSAE",
                                          "sae_minimal_config": {"k": "x", "bogus": 1}}),
    "valid but another k": _set("k", 3),
    "another k everywhere": lambda cfg: (cfg.update(k=3), cfg["metadata"].update(
        sae_minimal_config={**cfg["metadata"]["sae_minimal_config"], "k": 3})),
    "NaN weights": None,
}


@pytest.mark.parametrize("edit", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_a_lab_entry_with_a_bad_cfg_value_is_moved_aside_and_retrained(lab, capsys, edit):
    first = lab.sae("t", _make, **TRAIN)
    path = lab.run(first).path
    if edit is None:
        _nan_weights(path)
    else:
        cfg = json.loads((path / "cfg.json").read_text())
        edit(cfg)
        (path / "cfg.json").write_text(json.dumps(cfg))
    again = lab.sae("t", _make, **TRAIN)
    assert lab.run(again).history is not None, "a bad entry is retrained"
    assert "could not be loaded" in capsys.readouterr().out
    assert len(list(path.parent.glob(path.name + ".unreadable-*"))) == 1, "kept aside"
    assert lab.run(lab.sae("t", _make, **TRAIN)).history is None, "and the new one is served"


def test_a_lab_entry_saved_by_another_writer_during_training_is_kept(lab, monkeypatch, capsys):
    """The race without a lock (e.g. where fcntl is missing): the target appears while this
    process trains. It must neither crash nor replace the other writer's SAE."""
    monkeypatch.setattr(lab_mod, "file_lock", lambda *a, **k: contextlib.nullcontext())
    real_save, theirs = lab_mod.save_sae, _make(5)

    def save_while_another_writer_finishes(sae, path, **kw):
        if ".tmp-" in path.name:                           # our save into the temporary folder
            real_save(theirs, path.with_name(path.name[1:].split(".tmp-")[0]))
        return real_save(sae, path, **kw)

    monkeypatch.setattr(lab_mod, "save_sae", save_while_another_writer_finishes)
    got = lab.sae("r", _make, **TRAIN)
    assert torch.equal(got.W_dec, theirs.W_dec) and lab.run(got).history is None
    assert "saved by another process" in capsys.readouterr().out
    assert [p.name for p in lab.run(got).path.parent.iterdir()
            if ".tmp-" in p.name] == [], "no temporary folder is left behind"


LAB_CHILD = """
from sae_minimal.lm import lab as lab_mod
faults._patch_lab(setattr, dict.__setitem__, faults._tiny(0), faults.Path(sys.argv[1]))
lab = lab_mod.Lab(fast=True, verbose=False)
sae = lab.sae("race", faults._make, **faults.TRAIN)
print(json.dumps({"trained": lab.run(sae).history is not None, "w": float(sae.W_dec.sum()),
                  "rows": len(lab.activations())}))
"""


def test_two_processes_caching_and_training_one_lab_sae_both_finish_with_one_sae(tiny,
                                                                                  tmp_path):
    """Two real processes start together on an empty lab folder: both cache its activations and
    ask for the same SAE. Neither crashes; the SAE is trained once and loaded by the other."""
    procs = [_spawn(tmp_path, LAB_CHILD, str(tmp_path / "cache")) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["trained"] for r in results) == [False, True], "trained once, loaded once"
    assert results[0]["w"] == results[1]["w"] and results[0]["rows"] == results[1]["rows"] == 360
    [folder] = (tmp_path / "cache").glob("*/activations")
    reference = cache_activations(tiny, HOOK, _tokens(), tmp_path / "ref", progress=False)
    _same_rows(ActivationStore(folder).load_all(), reference.load_all())


# --- evaluation that must answer the question asked ---------------------------------------------
@pytest.mark.parametrize("mean_act", [None, torch.zeros(16), torch.zeros(8)],
                         ids=["no mean_act", "hook-wide mean_act", "sae-wide mean_act"])
def test_splice_eval_refuses_an_sae_of_another_width(tiny, toks, mean_act):
    narrow = sm.TopKSAE(8, 32, k=4)                        # 8 divides 16: a reshape would pass
    with pytest.raises(ValueError, match=r"d_in=8.*16 wide"):
        splice_eval(tiny, narrow, HOOK, toks[:4], mean_act=mean_act, progress=False)


def test_splice_eval_refuses_a_mean_act_of_another_width(tiny, toks):
    with pytest.raises(ValueError, match=r"mean_act must be the mean activation \[16\]"):
        splice_eval(tiny, sm.TopKSAE(16, 32, k=4), HOOK, toks[:4], mean_act=torch.zeros(8),
                    progress=False)
    with pytest.raises(ValueError, match="NaN"):
        splice_eval(tiny, sm.TopKSAE(16, 32, k=4), HOOK, toks[:4],
                    mean_act=torch.full((16,), float("nan")), progress=False)


def test_load_gpt2_offline_fails_at_once_saying_how_to_fix_it(monkeypatch):
    monkeypatch.setenv("SAE_MINIMAL_OFFLINE", "1")
    monkeypatch.setattr(models, "load_gpt2", lambda *a, **k: pytest.fail("network was tried"))
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"offline mode is on.*SAE_MINIMAL_OFFLINE=0.*standin"):
        models.load_lm("gpt2")
    assert time.perf_counter() - start < 1.0


class _OneDevice(TorchFunctionMode):
    """Fails any torch call that mixes tensors of two devices (CPU and 'meta' here), the way CUDA
    fails when token ids on the CPU index logits on the GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [*args, *kwargs.values()]
        devices = {a.device.type for a in flat if isinstance(a, torch.Tensor) and a.ndim > 0}
        if len(devices) > 1:
            raise RuntimeError(f"{func.__name__} mixes devices {sorted(devices)}")
        return func(*args, **kwargs)


def test_per_token_ce_moves_the_tokens_to_the_logits_device():
    logits, tokens = torch.empty(2, 5, 50, device="meta"), torch.randint(0, 50, (2, 5))
    with _OneDevice():
        out = per_token_ce(logits, tokens)
    assert out.shape == (2, 4) and out.device.type == "meta"


def test_model_device_is_where_the_embedding_lives(tiny):
    # HookedTransformer(cfg) puts itself on the GPU when there is one
    assert model_device(tiny).type == torch.device(tiny.cfg.device).type == tiny.W_E.device.type

    class Weightless:
        class cfg:
            device = "cuda:1"

    assert model_device(Weightless()) == torch.device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_model_on_the_gpu_with_tokens_on_the_cpu(toks, tmp_path, monkeypatch):
    """What Lab(device='cuda') does: the model and SAE on the GPU, the token ids on the CPU."""
    cpu_model, gpu_model = _tiny(0), _tiny(0).to("cuda")
    sae_cpu = _make(0)
    sae_gpu = _make(0).to("cuda")
    ref = splice_eval(cpu_model, sae_cpu, HOOK, toks, progress=False)
    got = splice_eval(gpu_model, sae_gpu, HOOK, toks, progress=False)
    assert got["ce_spliced"] == pytest.approx(ref["ce_spliced"], rel=1e-3)
    clean = clean_token_ce(gpu_model, toks)
    latent = int(sae_gpu.encode(run_to_hook(gpu_model, toks, HOOK)).gt(0).sum((0, 1)).argmax())
    effect = ablation_effect(gpu_model, sae_gpu, HOOK, toks, latent, clean_ce=clean.cpu())
    assert len(effect["ablation"]) > 0
    assert generate(gpu_model, toks[:2, :4], 3, hook_name=HOOK, direction=sae_gpu.W_dec[0],
                    alpha=2.0).device.type == "cpu"
    concept_logprob(gpu_model, toks, torch.tensor([1, 2]), hook_name=HOOK,
                    direction=sae_gpu.W_dec[0], alpha=1.0)
    continuation_loss(gpu_model, toks, 4)
    feature_dashboard(LatentContext(gpu_model, sae_gpu, HOOK, toks), latent)
    _patch_lab(monkeypatch.setattr, monkeypatch.setitem, _tiny(0), tmp_path)
    lab = lab_mod.Lab(fast=True, verbose=False, device="cuda")
    metrics = lab.evaluate(lab.sae("gpu", _make, **TRAIN))
    assert 0 < metrics["fvu"] < 1.5 and metrics["ce_recovered"] == metrics["ce_recovered"]


# --- errors that say what to fix ----------------------------------------------------------------
TYPO = "blocks.0.hook_resid_pots"


def _entry_points(model, toks, hook, sae):
    """Every lm function that takes a hook name and token ids, called with ``hook``."""
    direction = torch.ones(16)
    return {
        "run_to_hook": lambda: run_to_hook(model, toks, hook),
        "cache_activations": lambda: cache_activations(model, hook, toks, "never-made",
                                                       progress=False),
        "splice_eval": lambda: splice_eval(model, sae, hook, toks, progress=False),
        "LatentContext": lambda: LatentContext(model, sae, hook, toks),
        "generate": lambda: generate(model, toks[:, :4], 2, hook_name=hook, direction=direction,
                                     alpha=1.0),
        "concept_logprob": lambda: concept_logprob(model, toks, torch.tensor([1]),
                                                   hook_name=hook, direction=direction,
                                                   alpha=1.0),
        "ablation_effect": lambda: ablation_effect(model, sae, hook, toks, 0),
    }


@pytest.mark.parametrize("entry", list(_entry_points(None, None, None, None)))
def test_a_hook_name_typo_names_the_close_matches(tiny, toks, entry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    call = _entry_points(tiny, toks, TYPO, _make(0))[entry]
    with pytest.raises(ValueError, match=r"not a hook of this model: did you mean "
                                         r"'blocks\.0\.hook_resid_post'"):
        call()
    assert not (tmp_path / "never-made").exists(), "nothing is written for a refused call"


@pytest.mark.parametrize("bad_id", [50, 977, -1])
@pytest.mark.parametrize("entry", [*_entry_points(None, None, None, None), "clean_token_ce",
                                   "continuation_loss", "per_token_ce"])
def test_out_of_range_token_ids_name_the_vocabulary(tiny, toks, entry, bad_id, tmp_path,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = toks.clone()
    bad[1, 2] = bad_id
    calls = {**_entry_points(tiny, bad, HOOK, _make(0)),
             "clean_token_ce": lambda: clean_token_ce(tiny, bad),
             "continuation_loss": lambda: continuation_loss(tiny, bad, 4),
             "per_token_ce": lambda: per_token_ce(torch.zeros(*bad.shape, 50), bad)}
    with pytest.raises(ValueError, match=rf"token ids from {min(bad_id, 0)} to "
                                         rf"{max(bad_id, 49)}.*vocabulary has 50 ids"):
        calls[entry]()


def test_tokens_longer_than_the_context_and_bad_concept_ids_are_refused(tiny, toks):
    with pytest.raises(ValueError, match="n_ctx=16"):
        run_to_hook(tiny, torch.cat([toks, toks], dim=1), HOOK)
    with pytest.raises(ValueError, match="n_ctx=16"):
        generate(tiny, toks[:, :10], 10)
    with pytest.raises(ValueError, match="concept_ids hold token ids from 0 to 60"):
        concept_logprob(tiny, toks, torch.tensor([0, 60]))
    with pytest.raises(ValueError, match="integer tensor"):
        run_to_hook(tiny, toks.float(), HOOK)


@pytest.mark.parametrize("latent", [torch.tensor(3), torch.tensor([3]), np.int64(3)],
                         ids=["0-d tensor", "1-element tensor", "numpy int"])
def test_dashboard_accepts_a_latent_given_as_a_tensor_or_numpy_int(tiny, toks, latent):
    sae = _make(0)
    ctx = LatentContext(tiny, sae, HOOK, toks)
    board = feature_dashboard(ctx, latent)
    assert board.latent == 3 and board.html == feature_dashboard(ctx, 3).html


@pytest.mark.parametrize("latent, error, says", [(3.0, TypeError, "one latent index"),
                                                 (torch.tensor([1, 2]), TypeError, "one latent"),
                                                 ("3", TypeError, "one latent index"),
                                                 (32, ValueError, r"must be in \[0, 32\)"),
                                                 (-1, ValueError, r"must be in \[0, 32\)")])
def test_a_bad_latent_says_what_to_pass(tiny, toks, latent, error, says):
    sae = _make(0)
    with pytest.raises(error, match=says):
        feature_dashboard(LatentContext(tiny, sae, HOOK, toks), latent)
    with pytest.raises(error, match=says):
        ablation_effect(tiny, sae, HOOK, toks, latent)
    with pytest.raises(error, match=says):
        check_latent(latent, 32)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf"),
                                   torch.tensor(float("nan"))])
def test_steering_refuses_a_non_finite_alpha(tiny, toks, alpha):
    direction = torch.ones(16)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        generate(tiny, toks[:, :4], 2, hook_name=HOOK, direction=direction, alpha=alpha)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        concept_logprob(tiny, toks, torch.tensor([1]), hook_name=HOOK, direction=direction,
                        alpha=alpha)


def test_steering_refuses_a_bad_direction_or_temperature(tiny, toks):
    nan_dir = torch.full((16,), float("nan"))
    with pytest.raises(ValueError, match="direction contains NaN"):
        concept_logprob(tiny, toks, torch.tensor([1]), hook_name=HOOK, direction=nan_dir,
                        alpha=1.0)
    with pytest.raises(ValueError, match=r"expects d_in=8.*16 wide"):
        concept_logprob(tiny, toks, torch.tensor([1]), hook_name=HOOK, direction=torch.ones(8),
                        alpha=1.0)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        generate(tiny, toks[:, :4], 2, temperature=float("nan"))
    with pytest.raises(ValueError, match="latents hold indices from 0 to 40"):
        logit_effect_z(tiny, _make(0), [0, 40])


def test_web_text_held_out_windows_come_from_other_documents(monkeypatch):
    """GPT-2's web-text path (issue 15): 'held_out' must not read the training documents. A fake
    `datasets` whose every document is one repeated token id (its index) shows which were read."""
    from types import SimpleNamespace

    from sae_minimal.lm import text

    docs = [{"text": str(i)} for i in range(200)]
    monkeypatch.setattr(text, "lm_extra", lambda name: SimpleNamespace(
        load_dataset=lambda dataset, split: docs))
    monkeypatch.setattr(text, "offline", lambda: False)

    class Tok:
        bos_token_id = 999

        def __call__(self, s, add_special_tokens=False):
            return {"input_ids": [int(s)] * 30}

    def documents(split):
        ids = text.hf_dataset_tokens(Tok(), context=16, n_windows=20, split=split)
        return set(ids[:, 1:].flatten().tolist()) - {999}

    train, held = documents("train"), documents("held_out")
    assert train and held and not train & held
    assert all(i % text.HELD_OUT_EVERY == 0 for i in held)
    with pytest.raises(ValueError, match="'train' or 'held_out'"):
        text.hf_dataset_tokens(Tok(), split="test")
