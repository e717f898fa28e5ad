"""Every number the prose of a solution notebook quotes to three or more decimals is printed by one
of its cells (the course's rule: no number typed in, none left stale after a re-execution). A
number that is derived from printed ones, or quoted from a paper, is listed below with why.

Reads the committed notebooks (no execution): it catches a markdown cell that still quotes the
outputs of an earlier run, as 07 did once (rms error 0.0074 and gamma 0.018 beside a rerun's
0.0085 and -0.151)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# a decimal with three or more digits after the point, not part of a longer token (an arXiv id's
# digits are caught too: listed below)
NUMBER = re.compile(r"(?<![\w.])\d+\.\d{3,}(?!\d)")

NOT_PRINTED = {   # notebook -> {number: why the prose may quote it}
    "04_saes_on_gpt2": {
        "0.0023": "derived: the largest gap between the two seeds' FVU in the ladder table (L1, 8M)",
        "0.0012": "derived: the largest such gap for the TopK family in the ladder table",
        "0.0025": "derived: the largest gap between BatchTopK's and TopK's FVU in the ladder table",
        "0.0028": "derived: the same gap in the second seed's column",
    },
    "06_feature_splitting": {"2503.17547": "an arXiv identifier"},
    "07_scaling": {"0.056": "quoted from Gao et al.'s Figure 1", "0.084": "the same fit's exponent"},
    "08_evaluation_beyond_reconstruction": {
        "0.013": "derived: the dense probe's accuracy minus the k = 16 probes' (smallest gap)",
        "0.037": "derived: the same difference, largest gap",
        "0.071": "derived: the same difference for L1",
    },
}


def _outputs(nb) -> str:
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts.append(out.get("text", ""))
            texts += [out.get("data", {}).get(kind, "") for kind in ("text/plain", "text/html")]
    return "\n".join(texts)


def _printed(number: str, printed: str) -> bool:
    """Whether ``number`` appears in the outputs as a number of its own (0.018 is not in 0.0185)."""
    return re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", printed) is not None


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.stem)
def test_prose_numbers_are_printed(path):
    nb = nbformat.read(path, as_version=4)
    printed, allowed = _outputs(nb), NOT_PRINTED.get(path.stem, {})
    missing = [f"cell {i}: {m.group(0)} in '…{cell.source[max(0, m.start() - 50):m.end()]}…'"
               for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
               for m in NUMBER.finditer(cell.source)
               if m.group(0) not in allowed and not _printed(m.group(0), printed)]
    assert not missing, (f"{path.name}: the prose quotes numbers no cell prints (stale after a "
                         "re-execution?); print them, correct the prose, or list a derived or "
                         "quoted number in NOT_PRINTED with why:\n" + "\n".join(missing))
