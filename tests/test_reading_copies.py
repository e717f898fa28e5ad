"""Committed notebooks render the same everywhere (sae_minimal.course.render): no widget-only outputs, no nbval
directives in the cells a learner reads."""

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
