r"""Make executed notebooks read the same everywhere: JupyterLab, GitHub and nbviewer.

    clean_for_commit(nb)     what `course execute` applies before a notebook is saved

Three things render badly outside a live kernel:

- **Widget outputs.** A progress bar or a slider is stored as a reference to widget state; a static
  renderer shows its text fallback instead ("training TopKSAE: 0%| | 0/586", or
  "interactive(children=(IntSlider(..."), frozen at the moment the widget was created. Widgets are
  for live use only, so their outputs are dropped from saved copies (and with them the saved widget
  state); a cell that wants a figure in the reading copy draws it as a plain figure too.
- **Carriage returns.** A progress bar drawn as text (tqdm without ipywidgets) rewrites its line
  with "\r" hundreds of times; a live notebook shows only the last frame, but GitHub and nbviewer
  print every frame of the saved text. Each line is cut down to what a terminal would show, its
  last frame ("training TopKSAE: 100%|...| 586/586"): plain text, and no longer frozen at 0%.
- **Test directives.** ``# NBVAL_IGNORE_OUTPUT`` lines tell nbval which outputs to skip, but a
  learner reading the cell should not see them. They are moved into the cell's tags
  (``nbval-ignore-output``), which nbval reads the same way and which JupyterLab keeps out of sight.
"""

from __future__ import annotations

import re

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
DIRECTIVE = re.compile(r"^\s*#\s*(NBVAL_[A-Z_]+)\s*$")


def directives_to_tags(cell) -> None:
    """Move ``# NBVAL_...`` comment lines of a code cell into its metadata tags (in place)."""
    if cell.cell_type != "code":
        return
    lines = cell.source.split("\n")
    found = [m.group(1) for m in map(DIRECTIVE.match, lines) if m]
    if not found:
        return
    cell.source = "\n".join(line for line in lines if not DIRECTIVE.match(line))
    tags = cell.metadata.setdefault("tags", [])
    for name in found:
        tag = name.lower().replace("_", "-")
        if tag not in tags:
            tags.append(tag)


def drop_widget_outputs(cell) -> int:
    """Remove outputs that only a live widget can show (in place); returns how many."""
    if cell.cell_type != "code":
        return 0
    kept = [o for o in cell.outputs if WIDGET_VIEW not in o.get("data", {})]
    dropped = len(cell.outputs) - len(kept)
    cell.outputs = kept
    return dropped


# Everything up to a carriage return that more text follows on the same line: an earlier frame.
# The same rule as nbclient's and nbval's stream coalescing, so nbval compares the same text.
EARLIER_FRAME = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)


def last_frames(text: str) -> str:
    """``text`` as a terminal shows it: each line only from its last carriage return on."""
    return EARLIER_FRAME.sub("", text)


def collapse_carriage_returns(cell) -> None:
    """Merge adjacent stream outputs of the same stream (a progress bar's frames arrive as many
    messages) and cut each down to its last frames (in place)."""
    if cell.cell_type != "code":
        return
    merged = []
    for out in cell.outputs:
        if (out.output_type == "stream" and merged and merged[-1].output_type == "stream"
                and merged[-1].name == out.name):
            merged[-1].text += out.text
        else:
            merged.append(out)
    for out in merged:
        if out.output_type == "stream" and "\r" in out.text:
            out.text = last_frames(out.text)
    cell.outputs = merged


def clean_for_commit(nb):
    """Directives into tags, widget outputs and widget state dropped, text progress bars cut to
    their last frame; returns ``nb``, changed in place."""
    for cell in nb.cells:
        directives_to_tags(cell)
        drop_widget_outputs(cell)
        collapse_carriage_returns(cell)
    nb.metadata.pop("widgets", None)
    return nb


__all__ = ["clean_for_commit", "collapse_carriage_returns", "directives_to_tags",
           "drop_widget_outputs", "last_frames"]
