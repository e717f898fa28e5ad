"""Every decimal number the prose of a solution notebook quotes is printed by one of its cells, at
the precision the prose uses (the course's rule: no number typed in, none left stale after a
re-execution). A number the prose quotes from a paper or the chapter, or derives from printed ones,
is listed below with why; a setting may be quoted as it stands in a code cell.

Reads the committed notebooks (no execution): it catches a markdown cell that still quotes the
outputs of an earlier run, as 07 did once (rms error 0.0074 and gamma 0.018 beside a rerun's
0.0085 and -0.151).

What counts as printed: a number in a cell's output (text, or an HTML table's text, not its markup)
that rounds to the prose's number at the prose's precision (0.65 is printed by 0.651 or 0.6512);
the prose's 36.3% is printed by 36.3% or by 0.363. Signs are ignored (the prose writes −, Python -).
Whole percentages count too (the prose's 68% is printed by 0.68 or 68.2%), but not other integers
(years, counts, sizes: too many are printed for a match to mean anything). Numbers with one decimal
or none only match loosely this way (many printed numbers round to 1.5 or 68%), so the test is
strictest where stale numbers do the most harm: three decimals and more."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# a decimal number in the prose, or a whole percentage, not part of a longer token (an arXiv id's
# digits are caught too: listed below), with its exponent or percent sign
QUOTED = re.compile(r"(?<![\w.])(\d+\.\d+|\d+(?=%))(e[-+]?\d+)?(?![\d.]\d)(%?)")
# a number in the outputs, any form
PRINTED = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?")

CHAPTER_MMCS = "quoted from the chapter: its typical MMCS ranges (0.7–0.85 L1, 0.85–0.95 TopK)"
NOT_PRINTED = {   # notebook -> {number as the prose writes it: why the prose may quote it}
    "04_saes_on_gpt2": {
        "0.0023": "derived: the largest gap between the two seeds' FVU in the ladder table (L1, 8M)",
        "0.0012": "derived: the largest such gap for the TopK family in the ladder table",
        "0.0025": "derived: the largest gap between BatchTopK's and TopK's FVU in the ladder table",
        "0.0028": "derived: the same gap in the second seed's column",
        "2.4": "a section of Gao et al. (2024)",
        "0.95": CHAPTER_MMCS, "0.85": CHAPTER_MMCS,
    },
    "06_feature_splitting": {"2503.17547": "an arXiv identifier",
                             "50": "the middle 50% of a distribution: a definition"},
    "07_scaling": {"0.056": "quoted from Gao et al.'s Figure 1", "0.084": "the same fit's exponent",
                   "0.09": "the same fit's irreducible term",
                   "65": "quoted from Templeton et al. (2024): dead latents at 34M"},
    "08_evaluation_beyond_reconstruction": {
        "0.071": "derived: the dense probe's accuracy minus that of 16 residual dimensions (0.962 - 0.891)",
    },
}


def output_text(out) -> str:
    """What one output shows as text: its stream, its plain text and its HTML's text (not markup)."""
    data = out.get("data", {})
    return "\n".join([out.get("text", ""), data.get("text/plain", ""),
                      re.sub(r"<[^>]*>", " ", data.get("text/html", ""))])


def _outputs(nb) -> str:
    return "\n".join(output_text(out) for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []))


def _numbers(text: str) -> set[Decimal]:
    values = set()
    for m in PRINTED.finditer(text):
        try:
            value = Decimal(m.group(0))
        except InvalidOperation:
            continue
        if value.is_finite() and value < 10**15:   # not an id or a hash's digits
            values.add(value)
    return values


def _printed(quoted: str, percent: bool, printed: set[Decimal]) -> bool:
    """Whether a printed number rounds to ``quoted`` (a decimal string, maybe with an exponent)."""
    target = Decimal(quoted)
    step = Decimal(1).scaleb(target.as_tuple().exponent)
    scales = (Decimal(1), Decimal(100)) if percent else (Decimal(1),)
    return any((value * scale).quantize(step, rounding=mode) == target
               for value in printed for scale in scales for mode in (ROUND_HALF_UP, ROUND_HALF_EVEN))


def prose_quotes(nb):
    """Each number the markdown quotes: (cell index, its match, the number as written without a
    % sign, whether one follows)."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for m in QUOTED.finditer(cell.source):
                mantissa, exponent, percent = m.groups()
                yield i, m, mantissa + (exponent or ""), bool(percent)


def set_in_code(written: str, nb) -> bool:
    """Whether a code cell writes the number as the prose does (a setting quoted, not measured)."""
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    return re.search(rf"(?<![\w.]){re.escape(written)}(?![\d.]\d)", code) is not None


def unprinted(nb, allowed: dict[str, str] = {}) -> list[str]:
    """The prose's numbers that no output prints and no code cell sets, with where they are."""
    printed = _numbers(_outputs(nb))
    missing = []
    for i, m, written, percent in prose_quotes(nb):
        if written in allowed or set_in_code(written, nb):
            continue   # listed, or a setting quoted as the code has it
        if not _printed(written, percent, printed):
            where = nb.cells[i].source[max(0, m.start() - 50):m.end()].replace("\n", " ")
            missing.append(f"cell {i}: {m.group(0)} in '…{where}…'")
    return missing


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.stem)
def test_prose_numbers_are_printed(path):
    missing = unprinted(nbformat.read(path, as_version=4), NOT_PRINTED.get(path.stem, {}))
    assert not missing, (f"{path.name}: the prose quotes numbers no cell prints (stale after a "
                         "re-execution?); print them, correct the prose, or list a derived or "
                         "quoted number in NOT_PRINTED with why:\n" + "\n".join(missing))


def test_a_stale_number_is_caught():
    """The check itself: a number that was printed passes, the same number after a rerun fails."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print(fit)", outputs=[nbformat.v4.new_output(
            "stream", text="rms 0.0085, gamma -0.1513, dead 0.363\n")]),
        nbformat.v4.new_markdown_cell("The fit: rms 0.0085, γ = −0.151, 36.3% dead."),
        nbformat.v4.new_markdown_cell("Same, written otherwise: 8.50e-03, 0.15, 36%."),
        nbformat.v4.new_markdown_cell("Stale: rms 0.0074, γ = 0.018; 36.4% dead; 8.60e-03; 41%."),
        nbformat.v4.new_markdown_cell("Not numbers the prose measures: 2048 latents, layer 6.")])
    assert [m.split(" in ")[0] for m in unprinted(nb)] == [
        "cell 3: 0.0074", "cell 3: 0.018", "cell 3: 36.4%", "cell 3: 8.60e-03", "cell 3: 41%"]


@pytest.mark.parametrize("stem", sorted(NOT_PRINTED))
def test_listed_numbers_are_still_quoted(stem):
    """A listed number the prose no longer quotes is a stale exemption: remove it."""
    nb = nbformat.read(ROOT / "solutions" / f"{stem}.ipynb", as_version=4)
    prose = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    stale = [number for number in NOT_PRINTED[stem] if number not in prose]
    assert not stale, f"{stem}: NOT_PRINTED lists {stale}, which its prose no longer quotes"
