"""scripts/prose_map.py: after a re-execution, each quoted number maps to what the same place prints
now, at the prose's precision; what cannot be mapped is listed, never guessed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prose_map.py"


def _load():
    spec = importlib.util.spec_from_file_location("prose_map", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook(printed: str):
    return new_notebook(cells=[
        new_code_cell("lr = 0.003\nprint(stats)", outputs=[new_output("stream", text=printed)]),
        new_markdown_cell("FVU 0.089 at lr 0.003; 36.3% dead (1.25e-02 MSE); TopK 0.900, "
                          "L1 0.900; stale 0.0074.")])


def test_quotes_map_to_what_the_same_place_prints_now_and_the_rest_is_listed(tmp_path):
    prose_map = _load()
    old = _notebook("fvu 0.0894 dead 0.363 mse 0.012512 topk 0.9003 l1 0.8999\n")
    new = _notebook("fvu 0.0871 dead 0.4012 mse 0.013049 topk 0.8712 l1 0.9230\n")
    got = {e["quoted"]: e["new"] for e in prose_map.quote_map(old, new)}
    assert got == {"0.089": "0.087", "0.003": "0.003", "36.3%": "40.1%", "1.25e-02": "1.30e-02",
                   "0.900": None, "0.0074": None}
    whys = {e["quoted"]: e["why"] for e in prose_map.quote_map(old, new)}
    assert "setting" in whys["0.003"]                   # the code sets it: not a measurement
    assert whys["0.900"] == "its places now print 0.871, 0.923"    # two places, two new values
    assert whys["0.0074"].startswith("printed nowhere")
    text = prose_map.apply(new, prose_map.quote_map(old, new)).cells[1].source
    assert text == ("FVU 0.087 at lr 0.003; 40.1% dead (1.30e-02 MSE); TopK 0.900, L1 0.900; "
                    "stale 0.0074.")


def test_the_command_refuses_other_notebooks_and_an_existing_output(tmp_path):
    old, new, out = (tmp_path / f"{n}.ipynb" for n in ("old", "new", "out"))
    nbformat.write(_notebook("fvu 0.0894\n"), old)
    other = _notebook("fvu 0.0871\n")
    other.cells[1].source += " Edited."
    nbformat.write(other, new)
    run = subprocess.run([sys.executable, SCRIPT, old, new], capture_output=True, text=True)
    assert "must be the same notebook executed twice" in run.stderr
    nbformat.write(_notebook("fvu 0.0871\n"), new)
    out.write_text("a learner's notebook")
    run = subprocess.run([sys.executable, SCRIPT, old, new, "--apply", out], capture_output=True,
                         text=True)
    assert "exists" in run.stderr and out.read_text() == "a learner's notebook"
    assert "cell   1       0.089  changed -> 0.087" in run.stdout
