"""Committed notebooks render the same everywhere (sae_minimal.course.render): no widget-only
outputs, no nbval directives in the cells a learner reads, no progress-bar frames, warnings or
undrawable characters in outputs, no emphasis that JupyterLab prints as literal asterisks. The
last ones were found by looking at screenshots (scripts/screenshot_reading_copies.py)."""

import re
from pathlib import Path

import nbformat
import pytest

from sae_minimal.course.render import WIDGET_VIEW, clean_for_commit

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.relative_to(ROOT) for folder in ("solutions", "notebooks", "exercises")
                   for p in (ROOT / folder).glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_no_widget_outputs_and_no_test_directives_in_cells(path):
    nb = nbformat.read(ROOT / path, as_version=4)
    for i, cell in enumerate(nb.cells):
        assert "NBVAL_" not in cell.source, f"{path} cell {i}: move the nbval directive into the cell's tags"
        for out in cell.get("outputs", []):
            assert WIDGET_VIEW not in out.get("data", {}), f"{path} cell {i}: a widget output renders frozen"
    assert "widgets" not in nb.metadata


def test_clean_for_commit_moves_directives_and_drops_widgets():
    cell = nbformat.v4.new_code_cell("# NBVAL_IGNORE_OUTPUT\nx = 1\n  # NBVAL_SKIP")
    cell.outputs = [nbformat.v4.new_output("display_data", data={WIDGET_VIEW: {"model_id": "a"},
                                                                   "text/plain": "0%| | 0/5"}),
                    nbformat.v4.new_output("stream", text="kept\n")]
    nb = nbformat.v4.new_notebook(cells=[cell], metadata={"widgets": {"state": {}}})
    clean_for_commit(nb)
    assert cell.source == "x = 1"
    assert cell.metadata["tags"] == ["nbval-ignore-output", "nbval-skip"]
    assert [o.output_type for o in cell.outputs] == ["stream"] and "widgets" not in nb.metadata


# --- what a reader sees (problems found in screenshots: scripts/screenshot_reading_copies.py) -----
COMMITTED = [p for p in NOTEBOOKS if p.parts[0] in ("solutions", "notebooks")]   # with outputs
CODE_OR_MATH = re.compile(r"`[^`]*`|\$\$.*?\$\$|\$[^$]*\$", re.DOTALL)
ITALIC_OPENER = re.compile(r"(?<![*\w])\*(?![*\s])")
# "**" with punctuation on both sides ("Good?**;"): CommonMark closes the bold there, but
# JupyterLab's markdown renderer (marked) then fails to close an enclosing *italic* and prints
# the asterisks ("*Chapter sections ... Good?**; Exercise 4.*" in notebook 04).
PUNCTUATED_BOLD = re.compile(r"[^\w\s*]\*\*[^\w\s*]")
WARNING = re.compile(r"\b\w*Warning: ")


def lab_broken_emphasis(markdown: str) -> str | None:
    """The first paragraph JupyterLab would print with literal asterisks, or None."""
    for paragraph in re.split(r"\n\s*\n", markdown):
        text = CODE_OR_MATH.sub("", paragraph)
        bold = PUNCTUATED_BOLD.search(text)
        if bold and ITALIC_OPENER.search(text.replace("**", "")):
            return text[max(bold.start() - 50, 0):bold.end() + 20]
    return None


def output_text(out) -> str:
    if out.output_type == "stream":
        return out.text
    return "".join(v for k, v in out.get("data", {}).items()
                   if k.startswith("text/") and isinstance(v, str))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=str)
def test_markdown_emphasis_renders_in_jupyterlab(path):
    nb = nbformat.read(ROOT / path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            broken = lab_broken_emphasis(cell.source)
            assert broken is None, (f"{path} cell {i}: JupyterLab shows literal asterisks around "
                                    f"an italic span here (reword so '**' is not between two "
                                    f"punctuation marks, e.g. put the ';' inside the bold): "
                                    f"{broken!r}")


@pytest.mark.parametrize("path", COMMITTED, ids=str)
def test_outputs_read_as_plain_text(path):
    """No warning boxes, no progress-bar frames, no characters a browser draws as a box or �."""
    nb = nbformat.read(ROOT / path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = output_text(out)
            if out.output_type == "stream":
                assert "\r" not in text, f"{path} cell {i}: progress-bar frames (\\r) in an output"
                warning = WARNING.search(text) if out.name == "stderr" else None
                assert warning is None, (f"{path} cell {i}: a reading copy shows this warning: "
                                         f"{text.strip().splitlines()[0][:120]}")
            bad = sorted({ch for ch in text if ch == "\ufffd"
                          or (ord(ch) < 32 and ch not in "\n\t") or 0x7F <= ord(ch) < 0xA0})
            assert not bad, (f"{path} cell {i}: {out.output_type} output has characters drawn as "
                             f"a box or �: {[hex(ord(ch)) for ch in bad]}")


def test_lab_broken_emphasis_flags_only_punctuated_bold_inside_italics():
    assert lab_broken_emphasis("*Chapter **How Good?**; Exercise 4.*")
    assert lab_broken_emphasis("*a **b.**, c.*")
    assert lab_broken_emphasis("*a **b?** c.*") is None            # marked renders these
    assert lab_broken_emphasis("*a **b**; c.*") is None
    assert lab_broken_emphasis("**Three (a, b)**, each:\n\n1. *x*: y") is None   # 2 paragraphs
    assert lab_broken_emphasis("*a* and `**x?**;` in code") is None


def test_clean_for_commit_keeps_the_last_frame_of_text_progress_bars():
    frames = ["\rtraining:   0%| | 0/586",                       # a bar's frames, in two messages
              "\rtraining:  50%|5| 293/586\rtraining: 100%|#| 586/586\n"]
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=text) for text in frames]
    cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="done\n"))
    clean_for_commit(nbformat.v4.new_notebook(cells=[cell]))
    assert [(o.name, o.text) for o in cell.outputs] == [("stderr", "training: 100%|#| 586/586\n"),
                                                        ("stdout", "done\n")]


@pytest.mark.parametrize("path", COMMITTED, ids=str)
def test_committed_outputs_come_from_an_offline_run(path):
    """The committed runs are the offline course (SAE_MINIMAL_OFFLINE=1): a run that tried the model
    hub first leaves retry messages and a fallback banner that readers would take for an error."""
    nb = nbformat.read(ROOT / path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = output_text(out)
            assert "huggingface.co" not in text and "could not be downloaded" not in text, (
                f"{path} cell {i}: output from a run that tried the model hub; re-execute with "
                "SAE_MINIMAL_OFFLINE=1 python -m sae_minimal.course execute ...")


DRAWS = re.compile(r"^\s*(?:fig\s*,\s*\w+\s*=\s*)?plt\.(?:subplots|figure)\(", re.MULTILINE)


@pytest.mark.parametrize("path", COMMITTED, ids=str)
def test_cells_that_draw_a_figure_show_it(path):
    """A cell that makes a figure has it among its outputs: a run under MPLBACKEND=Agg (set for the
    tests and scripts, wrong for `course execute`) draws nothing in the kernel, and 04 and 07 were
    once committed that way with all eleven of their figures missing."""
    nb = nbformat.read(ROOT / path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and DRAWS.search(cell.source):
            assert any(kind.startswith("image/") for out in cell.outputs for kind in out.get("data", {})), (
                f"{path} cell {i} draws a figure but shows none; re-execute without MPLBACKEND=Agg: "
                "SAE_MINIMAL_OFFLINE=1 python -m sae_minimal.course execute ...")
