"""Notebooks 04-08 run end to end on GPT-2's code path, offline (issue 15, item 6).

Online, ``Lab()`` loads GPT-2 small, which has no shipped reference SAEs: every reference section
then trains the references' recipes on the lab's own activations (``Lab.reference``). CI has no hub,
so here the notebooks run with ``SAE_MINIMAL_MODEL=gpt2-shaped``: GPT-2 small's architecture (d_model
768, 12 heads, vocabulary 50257) and GPT-2's real BPE tokenizer, with random weights and 2 blocks,
at tiny sizes (``lab.MODEL_SIZES``). Its numbers are noise; what is tested is that no cell of the
solution notebooks assumes the stand-in (its width, its shipped references, its card, its budgets)
and that the banner says which model ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformer_lens")
pytest.importorskip("nbclient")

from sae_minimal.course.runner import execute  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["04_saes_on_gpt2", "05_steering_and_ablation", "06_feature_splitting", "07_scaling",
             "08_evaluation_beyond_reconstruction"]


@pytest.fixture(scope="module")
def gpt2_shaped_env(tmp_path_factory):
    """The kernels inherit this environment: the GPT-2-shaped model, its own cache folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SAE_MINIMAL_MODEL", "gpt2-shaped")
    mp.setenv("SAE_MINIMAL_CACHE", str(tmp_path_factory.mktemp("gpt2_shaped_cache")))
    mp.setenv("SAE_MINIMAL_OFFLINE", "1")
    yield
    mp.undo()


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_gpt2_shaped(name, gpt2_shaped_env):
    nb = execute(ROOT / "solutions" / f"{name}.ipynb", fast=True, allow_errors=True, timeout=600)
    errors = [f"cell {i}: {o.ename}: {o.evalue[:300]}" for i, c in enumerate(nb.cells)
              if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{name} fails on GPT-2's code path:\n" + "\n".join(errors)
    printed = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "MODEL IN USE: gpt2-shaped" in printed, "the banner must say which model ran"
    assert "Lab: gpt2-shaped at blocks.0.hook_resid_post (d_in 768" in printed
