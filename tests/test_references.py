"""Reference SAEs: the loader (against a small folder built here) and the shipped set."""

import json
import time

import pytest
import torch

import sae_minimal as sm
from sae_minimal.lm import references as refs


def _fake_folder(tmp_path):
    """A reference folder as the build script writes it, with one TopK SAE and its twin."""
    card = {"hook": refs.HOOK, "model": "standin", "model_fingerprint": "0" * 40,
            "training_activations": 1000, "held_out_activations": 100, "batch_size": 1024,
            "torch": torch.__version__, "sae_minimal": sm.__version__, "saes": {}}
    run = {"fvu": 0.1, "l0": 4.0, "dead": 0.0, "dense": 0.0, "ce_recovered": 0.9, "kl": 0.1,
           "seconds": 1.0, "mmcs": 0.8}
    card["saes"]["topk-k4-64"] = {
        "class": "TopKSAE", "config": {"d_in": 16, "d_sae": 64, "k": 4, "seed": 0}, "tokens": 2000,
        "seeds": [7, 8], "runs": {"1000/seed0": run, "1000/seed1": run, "2000/seed0": run,
                                  "2000/seed1": run},
        "converged": {"fvu": 0.01, "dead_points": 0.0, "dead": 0.0, "mmcs": 0.01, "ok": True}}
    for name, seed in (("topk-k4-64", 7), ("topk-k4-64-seed1", 8)):
        sm.save_sae(sm.TopKSAE(16, 64, k=4, seed=seed).half(), tmp_path / name,
                    hook_name=refs.HOOK, model_name="standin")
    (tmp_path / refs.CARD_JSON).write_text(json.dumps(card))
    return tmp_path


def test_load_reference_gives_float32_eval_sae_and_its_twin(tmp_path):
    folder = _fake_folder(tmp_path)
    assert refs.list_references(folder) == ["topk-k4-64", "topk-k4-64-seed1"]
    a = refs.load_reference("topk-k4-64", folder=folder)
    b = refs.load_reference("topk-k4-64-seed1", folder=folder)
    assert isinstance(a, sm.TopKSAE) and a.W_dec.dtype == torch.float32 and not a.training
    assert not torch.equal(a.W_dec, b.W_dec)                  # two seeds, two dictionaries
    md = refs.card_markdown(refs.reference_card(folder))
    assert "| topk-k4-64 | d_sae 64, k 4 | 2,000 |" in md and "yes (FVU 1.0%" in md



def test_card_lists_each_ladder_with_its_hardware_and_mmcs_where_measured():
    run = {"fvu": 0.1, "l0": 4.0, "dead": 0.0, "dense": 0.0, "ce_recovered": 0.9, "kl": 0.1}
    card = {"hook": refs.HOOK, "model_fingerprint": "0" * 40, "sae_minimal": sm.__version__,
            "torch": torch.__version__, "batch_size": 1024, "training_activations": 1000,
            "held_out_activations": 100, "saes": {}, "ladders": [
                {"hardware": "H100", "note": "no weights kept", "runs": {"topk-k4-64": {
                    "1000/seed0": run, "2000/seed0": {**run, "fvu": 0.09}}}},
                {"hardware": "CPU", "note": "two cores", "runs": {"topk-k4-64": {
                    "1000/seed0": {**run, "mmcs": 0.50}, "1000/seed1": run,
                    "2000/seed0": {**run, "fvu": 0.098, "mmcs": 0.55}, "2000/seed1": run}}}]}
    md = refs.card_markdown(card)
    h100, cpu = md.split("## Convergence ladder (H100)")[1].split("## Convergence ladder (CPU)")
    assert "| topk-k4-64 | 2,000 | 0.0900 | -10.0% |" in h100 and h100.rstrip().endswith("|  |  |")
    assert "| topk-k4-64 | 2,000 | 0.0980 / 0.1000 | -2.0% |" in cpu
    assert cpu.rstrip().endswith("| 0.550 | +10.0% |")

def test_unknown_reference_lists_the_names(tmp_path):
    folder = _fake_folder(tmp_path)
    with pytest.raises(KeyError, match="topk-k4-64, topk-k4-64-seed1"):
        refs.load_reference("topk-k16-2048-typo", folder=folder)


def test_missing_or_corrupt_card_says_how_to_rebuild(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_reference_saes.py"):
        refs.list_references(tmp_path / "nowhere")
    (tmp_path / refs.CARD_JSON).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        refs.reference_card(tmp_path)


shipped = pytest.mark.skipif(not (refs.REFERENCE_DIR / refs.CARD_JSON).exists(),
                             reason="the reference SAEs are not built in this checkout")


@shipped
def test_every_shipped_reference_loads_offline_and_matches_its_card():
    card = refs.reference_card()
    t0 = time.perf_counter()
    for name in refs.list_references():
        sae = refs.load_reference(name)
        entry = card["saes"][name.split("-seed")[0]]
        assert type(sae).__name__ == entry["class"] and sae.d_in == 256
        if "-seed" not in name:           # (a twin's data-calibrated settings, e.g. JumpReLU's
            assert sae.config() == entry["config"]           # bandwidth, are its own)
        assert sae.d_sae == entry["config"].get("d_sae", sae.d_sae)
        assert torch.isfinite(sae.W_dec).all()
        assert sae.sae_lens_metadata["hook_name"] == refs.HOOK
    assert time.perf_counter() - t0 < 60      # generous: a hang, not a benchmark


@shipped
def test_the_cards_convergence_verdicts_follow_from_its_numbers():
    """The card may say "not converged"; it may not say "converged" where its numbers do not. A
    reference without a verdict (its T/2 run is not on record) ships below its T and says so."""
    for name, entry in refs.reference_card()["saes"].items():
        if "converged" not in entry:
            assert entry["target_tokens"] > entry["tokens"], name
            continue
        half = entry["runs"][f"{entry['tokens'] // 2}/seed0"]
        full = entry["runs"][f"{entry['tokens']}/seed0"]
        assert refs.convergence(half, full) == entry["converged"], name


@shipped
def test_shipped_weights_fit_the_package_budget():
    size = sum(p.stat().st_size for p in refs.REFERENCE_DIR.rglob("*") if p.is_file())
    assert size < 40e6, f"reference SAEs take {size / 1e6:.1f} MB, over the 40 MB budget"


def test_load_pretrained_converts_what_the_hub_gives(tmp_path, monkeypatch):
    """GPT-2's published SAEs, through SAELens's from_pretrained, faked by a local checkpoint:
    the loading code runs without the network."""
    sae_lens = pytest.importorskip("sae_lens")
    ckpt = sm.save_sae(sm.ReLUSAE(32, 128, seed=3), tmp_path / "hub",
                       hook_name="blocks.7.hook_resid_pre", model_name="gpt2-small")
    asked = []

    def fake_from_pretrained(release, sae_id, device="cpu", **kw):
        asked.append((release, sae_id))
        return sae_lens.SAE.load_from_disk(str(ckpt), device=device)

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", staticmethod(fake_from_pretrained))
    monkeypatch.delenv("SAE_MINIMAL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sae = refs.load_pretrained("gpt2-small-res-jb")
    assert asked == [("gpt2-small-res-jb", "blocks.7.hook_resid_pre")]
    assert isinstance(sae, sm.ReLUSAE) and not sae.training
    assert torch.equal(sae.W_dec, sm.load_sae(ckpt).W_dec)
    assert sae.sae_lens_metadata["hook_name"] == "blocks.7.hook_resid_pre"
    with pytest.raises(ValueError, match="Pass sae_id="):
        refs.load_pretrained("some-other-release")
    monkeypatch.setenv("SAE_MINIMAL_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="load_reference"):
        refs.load_pretrained("gpt2-small-res-jb")


def test_convergence_verdict():
    base = {"fvu": 0.100, "dead": 0.050, "mmcs": 0.600}
    assert refs.convergence(base, {**base, "fvu": 0.099})["ok"]
    assert not refs.convergence(base, {**base, "fvu": 0.095})["ok"]            # 5% still falling
    assert not refs.convergence(base, {**base, "mmcs": 0.640})["ok"]
    assert refs.convergence({**base, "dead": 0.001}, {**base, "dead": 0.002})["ok"]  # 0.1 point
    assert not refs.convergence(base, {**base, "dead": 0.040})["ok"]           # 1 point, 20%


def _script(name: str):
    """A module of the repository's scripts/ folder (not a package), imported from its file."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_standin_computes_what_the_hooked_transformer_does():
    """The GPU build's stand-in (scripts/standin_plain.py, no transformer-lens) against
    load_standin(): the activations the references train on, and the logits CE is spliced into."""
    from sae_minimal.lm.activations import run_from_hook, run_to_hook
    from sae_minimal.lm.models import load_lm
    from sae_minimal.lm.text import corpus_tokens

    hooked, plain = load_lm("standin", verbose=False), _script("standin_plain").StandinPlain()
    tokens = corpus_tokens(hooked.tokenizer, "held_out")[:4]
    a, b = run_to_hook(hooked, tokens, refs.HOOK), run_to_hook(plain, tokens, refs.HOOK)
    assert (a - b).abs().max() < 1e-4 * a.abs().max()
    assert (hooked(tokens) - plain(tokens)).abs().max() < 1e-3
    replaced = plain.run_with_hooks(tokens, fwd_hooks=[(refs.HOOK, lambda act, hook: act * 0)])
    assert not torch.allclose(replaced, plain(tokens))        # the hook's replacement is used
    # splice_eval's path: the blocks after the hook, from an activation (here a scaled one)
    spliced = run_from_hook(hooked, a * 0.5, refs.HOOK, tokens)
    assert (spliced - run_from_hook(plain, a * 0.5, refs.HOOK, tokens)).abs().max() < 1e-3


@shipped
def test_the_shipped_card_markdown_is_made_from_card_json():
    """REFERENCE_CARD.md is generated: an edit of card.json that was not re-rendered fails here."""
    md = (refs.REFERENCE_DIR / "REFERENCE_CARD.md").read_text()
    assert md == refs.card_markdown(refs.reference_card())


def _build_header():
    """The card header the build's prepare() would write, for write_card tests."""
    return {"hardware": "CPU", "model_fingerprint": None, "hook": refs.HOOK, "sae_minimal": "0",
            "torch": torch.__version__, "batch_size": 1024, "training_activations": 1000,
            "held_out_activations": 100}


RUN_METRICS = {"fvu": 0.2, "l0": 16.0, "dead": 0.0, "dense": 0.0, "ce_recovered": 0.9, "kl": 0.1,
               "seconds": 1.0}


def _fake_run(build, work, name: str, n_tokens: int, index: int, **metrics) -> None:
    """One finished run in a build's work folder: a small SAE of the recipe's class, its
    metrics.json (RUN_METRICS updated by ``metrics``) and every latent alive."""
    folder = build.run_dir(work, name, n_tokens, index)
    sm.save_sae(refs.RECIPES[name][0](8, d_sae=32, k=4, seed=index), folder, hook_name=refs.HOOK)
    (folder / "metrics.json").write_text(json.dumps({**RUN_METRICS, **metrics}))
    torch.save(torch.ones(32), folder / "density.pt")


def test_the_build_has_a_budget_for_every_recipe_and_ships_what_it_verdicts(tmp_path):
    """scripts/build_reference_saes.py: every recipe has its T (a recipe added without one would
    stop a full build at its start), and write_card ships each reference at the largest budget
    both seeds finished, with the verdict from half of it."""
    build = _script("build_reference_saes")
    assert set(build.TOKENS) == set(refs.RECIPES)
    assert all(t % 2 == 0 for t in build.TOKENS.values())
    name, seeds = "topk-k16-2048", refs.RECIPES["topk-k16-2048"][2]     # two seeds
    header = _build_header()
    for n, fvu in ((1000, 0.2), (2000, 0.199), (4000, 0.15)):   # 4000: only seed 0 finished
        for i in (range(len(seeds)) if n < 4000 else (0,)):
            # the half budget trained on a GPU lease, the rest here: each run keeps its machine
            where = {"hardware": "NVIDIA H100"} if n == 1000 else {}
            _fake_run(build, tmp_path / "work", name, n, i, fvu=fvu, **where)
    out = tmp_path / "out"
    build.write_card(tmp_path / "work", out, {name: [1000, 2000, 4000]}, header)
    entry = json.loads((out / refs.CARD_JSON).read_text())["saes"][name]
    assert entry["tokens"] == 2000 and entry["converged"]["ok"]     # 0.5% change in FVU
    assert 0 < entry["runs"]["2000/seed0"]["mmcs"] <= 1                # both seeds were at hand
    assert (out / name / "cfg.json").exists() and (out / f"{name}-seed1" / "cfg.json").exists()
    assert entry["hardware"] == ["CPU", "NVIDIA H100"]
    rows = [r for r in (out / "REFERENCE_CARD.md").read_text().splitlines() if r.startswith("| top")]
    assert [("(on NVIDIA H100)" in r) for r in rows] == [True, False]   # 1,000 and 2,000 tokens
    # a T/2 kept as metrics only (from a ladder) while T is half done: nothing to ship yet, no error
    for i in range(len(seeds)):
        for f in ("cfg.json", "sae_weights.safetensors"):
            (build.run_dir(tmp_path / "work", name, 2000, i) / f).unlink()
    build.write_card(tmp_path / "work", tmp_path / "out2", {name: [1000, 2000, 4000]}, header)
    assert name not in json.loads((tmp_path / "out2" / refs.CARD_JSON).read_text())["saes"]


def test_ship_trained_takes_the_largest_budget_every_seed_finished_and_the_card_says_below_t(
        tmp_path):
    """--ship-trained (a T too long for the machines at hand): trained_budgets finds the largest
    budget up to T at which both seeds have weights, and the card names the T not reached."""
    build = _script("build_reference_saes")
    name, work = "topk-k16-2048", tmp_path / "work"
    runs = {(2_000_000, 0): 0.2, (2_000_000, 1): 0.2, (4_000_000, 0): 0.15, (4_000_000, 1): 0.15,
            (8_000_000, 0): 0.14}                       # 8M: only seed 0 finished
    for (n, i), fvu in runs.items():
        _fake_run(build, work, name, n, i, fvu=fvu)
    assert build.trained_budgets(work, name, 16_000_000) == [2_000_000, 4_000_000]
    assert build.trained_budgets(work, name, 2_000_000) == [1_000_000, 2_000_000]
    assert build.trained_budgets(work, "l1-2048", 16_000_000) == []
    build.write_card(work, tmp_path / "out", {name: [2_000_000, 4_000_000]}, _build_header(),
                     {name: 16_000_000})
    entry = json.loads((tmp_path / "out" / refs.CARD_JSON).read_text())["saes"][name]
    assert entry["tokens"] == 4_000_000 and entry["target_tokens"] == 16_000_000
    assert not entry["converged"]["ok"]                 # FVU -25% from 2M
    row = next(r for r in (tmp_path / "out" / "REFERENCE_CARD.md").read_text().splitlines()
               if r.startswith(f"| {name} ") and "4,000,000" in r)
    assert "**no** (FVU 25.0%" in row and "below its T of 16,000,000 tokens" in row
    build.write_card(work, tmp_path / "out2", {name: [2_000_000, 4_000_000]}, _build_header())
    assert "target_tokens" not in json.loads((tmp_path / "out2" / refs.CARD_JSON).read_text())[
        "saes"][name]                                   # at its T: nothing to say


def test_import_ladder_replaces_a_ladder_in_its_place(tmp_path):
    """--import-ladder: a ladder imported again under its label replaces the old one where it was
    (notebook 04 marks the ladders by their order), with the runs' metrics minus their curves."""
    build = _script("build_reference_saes")
    out, runs = tmp_path / "out", tmp_path / "runs"
    old = [{"hardware": h, "note": "old", "runs": {}} for h in ("H100", "CPU")]
    build.save_card(out, {**json.loads((refs.REFERENCE_DIR / refs.CARD_JSON).read_text()),
                          "ladders": old})
    folder = runs / "topk-k16-2048" / "8000000" / "seed0"
    folder.mkdir(parents=True)
    metrics = {"fvu": 0.1, "l0": 16.0, "dead": 0.0, "dense": 0.0, "ce_recovered": 0.9, "kl": 0.1,
               "seconds": 1.0, "lr": 1e-3, "curve": {"tokens": [1]}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    build.import_ladder(runs, out, "new", "H100")
    ladders = json.loads((out / refs.CARD_JSON).read_text())["ladders"]
    assert [(lad["hardware"], lad["note"]) for lad in ladders] == [("H100", "new"), ("CPU", "old")]
    assert ladders[0]["runs"]["topk-k16-2048"]["8000000/seed0"]["fvu"] == 0.1
    assert "curve" not in ladders[0]["runs"]["topk-k16-2048"]["8000000/seed0"]
    build.import_ladder(runs, out, "short runs", "CPU, short", curves=True)
    kept = json.loads((out / refs.CARD_JSON).read_text())["ladders"][-1]
    assert kept["hardware"] == "CPU, short"
    assert kept["runs"]["topk-k16-2048"]["8000000/seed0"]["curve"] == {"tokens": [1]}


def test_budget_runs_joins_table_and_ladders_the_table_first_then_the_later_ladder():
    """Held-out FVU against budget reads every run of a recipe; a budget measured twice is taken
    from the card's table, else from the later ladder (the current recipe), each labelled."""
    def run(fvu):
        return {"fvu": fvu}
    card = {"saes": {"a": {"runs": {"4/seed0": run(0.4), "4/seed1": run(0.41), "8/seed0": run(0.3)}}},
            "ladders": [{"hardware": "H100", "runs": {"a": {"2/seed0": run(0.6), "4/seed0": run(0.9),
                                                            "16/seed0": run(0.25)}}},
                        {"hardware": "CPU", "runs": {"a": {"16/seed0": run(0.2), "32/seed1": run(0.1)}}}]}
    got = refs.budget_runs(card, "a")
    assert list(got) == [2, 4, 8, 16]
    assert [(r["source"], r["fvu"]) for r in got.values()] == [
        ("H100", 0.6), ("card", 0.4), ("card", 0.3), ("CPU", 0.2)]
    assert {t: r["fvu"] for t, r in refs.budget_runs(card, "a", 1).items()} == {4: 0.41, 32: 0.1}
    assert refs.budget_runs(card, "missing") == {}


def test_write_card_drops_ladder_runs_the_table_now_holds_and_stale_notes(tmp_path):
    """A ladder run that becomes a shipped reference's T/2 or T (the same run: same held-out numbers
    and seconds) leaves the ladder, so no budget is counted twice; other ladder runs stay."""
    build = _script("build_reference_saes")
    name = "topk-k16-8192"                                          # one seed
    run = {"fvu": 0.2, "l0": 16.0, "dead": 0.0, "dense": 0.0, "ce_recovered": 0.9, "kl": 0.1,
           "seconds": 5.0}
    for n in (1000, 2000):
        folder = build.run_dir(tmp_path / "work", name, n, 0)
        sm.save_sae(refs.RECIPES[name][0](8, d_sae=32, k=4, seed=0), folder, hook_name=refs.HOOK)
        (folder / "metrics.json").write_text(json.dumps({**run, "fvu": 0.2 - n / 1e5}))
    other = {**run, "fvu": 0.3}                                     # another run at 1000 tokens
    ladders = [{"hardware": "CPU", "note": "", "runs": {name: {
        "500/seed0": run, **{f"{n}/seed0": {**run, "fvu": 0.2 - n / 1e5} for n in (1000, 2000)}}}},
               {"hardware": "H100", "note": "", "runs": {name: {"1000/seed0": other}}}]
    out = tmp_path / "out"
    out.mkdir()
    (out / refs.CARD_JSON).write_text(json.dumps({"ladders": ladders, "tokens_note": "T = 4M"}))
    header = _build_header()
    build.write_card(tmp_path / "work", out, {name: [1000, 2000]}, header)
    card = json.loads((out / refs.CARD_JSON).read_text())
    assert list(card["saes"][name]["runs"]) == ["1000/seed0", "2000/seed0"]
    assert card["ladders"][0]["runs"] == {name: {"500/seed0": run}}
    assert card["ladders"][1]["runs"] == {name: {"1000/seed0": other}}
    assert "tokens_note" not in card              # an older build's one T for all: stale now


def test_write_card_moves_the_table_runs_it_replaces_into_a_ladder_with_their_curves(tmp_path):
    """The final build replaces the 2M/4M table by longer runs: the replaced runs' metrics and
    curves go to the ladder "CPU, 2M-4M" (07 reads their dense curves), once, and a rerun that
    changes nothing moves nothing."""
    build = _script("build_reference_saes")
    name, work, out = "topk-k16-8192", tmp_path / "work", tmp_path / "out"
    run = {"fvu": 0.2, "l0": 16.0, "dead": 0.0, "dense": 0.0, "ce_recovered": 0.9, "kl": 0.1,
           "seconds": 5.0}
    for n in (8_000_000, 16_000_000):
        folder = build.run_dir(work, name, n, 0)
        sm.save_sae(refs.RECIPES[name][0](8, d_sae=32, k=4, seed=0), folder, hook_name=refs.HOOK)
        (folder / "metrics.json").write_text(json.dumps(run))
    short = {f"{n}/seed0": {**run, "fvu": 0.3, "curve": {"tokens": [n]}} for n in (2_000_000, 4_000_000)}
    out.mkdir()
    (out / refs.CARD_JSON).write_text(json.dumps({"saes": {name: {"tokens": 4_000_000, "runs": short}},
                                                  "ladders": [{"hardware": "CPU", "note": "", "runs": {}}]}))
    for _ in range(2):
        build.write_card(work, out, {name: [8_000_000, 16_000_000]}, _build_header())
        card = json.loads((out / refs.CARD_JSON).read_text())
        assert list(card["saes"][name]["runs"]) == ["8000000/seed0", "16000000/seed0"]
        assert [lad["hardware"] for lad in card["ladders"]] == ["CPU", "CPU, 2M-4M"]
        assert card["ladders"][1]["runs"] == {name: short}


def test_report_progress_says_how_far_and_how_long_at_this_sittings_speed(tmp_path, capsys):
    build = _script("build_reference_saes")
    run = ("topk-k16-512", 0, 1000)
    folder = build.run_dir(tmp_path, *run[:1], run[2], run[1])
    folder.mkdir(parents=True)
    for elapsed, tokens in ((600.0, 300), (1200.0, 500)):      # 200 tokens in 600 s: 1,500 s left
        torch.save({"tokens": tokens}, folder / build.CHECKPOINT)
        build.report_progress(tmp_path, [run], elapsed)
    first, second = capsys.readouterr().out.splitlines()
    assert first.endswith("1,000 tokens: 30% trained")       # a resumed run's 300: no speed yet
    assert second.endswith("1,000 tokens: 50% trained, about 25 min left")


def test_take_from_ladders_fills_budgets_below_t_from_the_later_ladder_and_never_t(tmp_path):
    """--from-ladders: a budget below T that a ladder holds becomes a finished run (metrics only,
    from the later ladder where both hold it); T, which ships, and runs already in the work folder
    are left alone, and a ladder without the run gives nothing."""
    build = _script("build_reference_saes")
    name, work = "topk-k16-2048", tmp_path / "work"                  # two seeds
    run = {"fvu": 0.2, "l0": 16.0, "dead": 0.0, "seconds": 5.0}
    ladders = [{"hardware": "H100", "note": "", "runs": {name: {"1000/seed0": {**run, "fvu": 0.9},
                                                                "2000/seed0": run}}},
               {"hardware": "CPU", "note": "", "runs": {name: {"1000/seed0": run,
                                                               "1000/seed1": {**run, "fvu": 0.3}}}}]
    card = tmp_path / refs.CARD_JSON
    card.write_text(json.dumps({"ladders": ladders}))
    done = build.run_dir(work, name, 500, 1)
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({**run, "fvu": 0.5}))   # trained here already
    taken = build.take_from_ladders(work, card, {name: [500, 1000, 2000]})
    assert taken == [f"{name} seed0 1,000 tokens: from the card's CPU ladder",
                     f"{name} seed1 1,000 tokens: from the card's CPU ladder"]
    assert build.finished(work, name, 1000, 0) == run
    assert build.finished(work, name, 1000, 1)["fvu"] == 0.3
    assert build.finished(work, name, 2000, 0) is None                # T is always trained
    assert build.finished(work, name, 500, 1)["fvu"] == 0.5           # not replaced
    assert build.finished(work, name, 500, 0) is None                 # no ladder holds it
    assert build.take_from_ladders(work, tmp_path / "none.json", {name: [1000, 2000]}) == []


def test_train_run_skips_a_run_another_build_finished_meanwhile(tmp_path, monkeypatch):
    """Two builds on one --work folder (a second process started for one reference): a run the other
    finished while this one's pool waited is read back, not trained again from scratch."""
    build = _script("build_reference_saes")
    folder = build.run_dir(tmp_path, "topk-k16-512", 1000, 1)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"fvu": 0.13, "seconds": 5.0}))
    monkeypatch.setattr(build, "_DATA", {"work": tmp_path})     # no model, no data: nothing to train with
    assert build.train_run("topk-k16-512", 1, 1000) == {"fvu": 0.13, "seconds": 5.0}


def test_training_curve_keeps_the_end_and_the_early_batches():
    """A 128M-token run's history: powers of two up to 512 steps, then every 625 steps. The thinned
    curve must end where training ended and keep the early, log-spaced points a log axis shows."""
    steps = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] + list(range(625, 125_001, 625))
    steps[-1] = 124_999                                   # the last step is not on the grid
    history = {"tokens": [s * 1024 for s in steps], "fvu": [1 / s for s in steps],
               "l0": [16.0] * len(steps), "dead_frac": [0.0] * len(steps), "loss": [0.0] * len(steps)}
    curve = refs.training_curve(history, points=60)
    assert set(curve) == {"tokens", "fvu", "l0", "dead_frac"}
    assert len(curve["tokens"]) <= 62 and curve["tokens"] == sorted(set(curve["tokens"]))
    assert curve["tokens"][-1] == 124_999 * 1024 and curve["tokens"][0] == 1024
    assert {s * 1024 for s in (1, 4, 16, 64, 256)} <= set(curve["tokens"])
    assert all(f == round(1024 / t, 5) for t, f in zip(curve["tokens"], curve["fvu"]))
    short = {k: v[:5] for k, v in history.items()}
    assert refs.training_curve(short)["tokens"] == short["tokens"]
