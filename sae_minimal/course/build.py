"""Read notebooks and build the course from its one source, ``solutions/``.

    build()            solutions/ -> exercises/ (solution blocks replaced by stubs, outputs cleared)
                       and notebooks/ (markers stripped, outputs kept)
    nbgrader_course()  solutions/ -> an nbgrader course directory (source/ and nbgrader_config.py)
    read_notebook()    a notebook, or a one-line CourseError saying why the file is not one

A marker may vary in case, spacing and number of ``#`` and carry a note (``## begin solution (part
a)``); any other line that mentions a marker, an unclosed or unmatched block, or an unreadable
notebook stops the build before anything is written.

The solutions follow nbgrader's layout, so that ``exercises/`` is what ``nbgrader
generate_assignment`` hands out: a ``# HINT:`` line sits above its ``### BEGIN SOLUTION`` line
(nbgrader deletes everything inside the block; ``build`` keeps a hint found inside too), and each
checker call is a cell of its own after the solution cell, a locked nbgrader test cell with points.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = "raise NotImplementedError()"
# A marker line: '#'s, BEGIN/END, SOLUTION/HIDDEN TESTS, in any case or spacing, maybe a note after.
MARKER = re.compile(r"^\s*#+\s*(BEGIN|END)[\s_-]*(SOLUTION|HIDDEN[\s_-]*TESTS?)\b", re.IGNORECASE)
# Any other mention of a marker (in a string, in prose, after code) could hide a solution: refused.
MENTION = re.compile(r"\b(BEGIN|END)[\s_-]*(SOLUTION|HIDDEN[\s_-]*TESTS?)\b")


class CourseError(Exception):
    """A problem the course tools report in one line (no traceback): what is wrong, what to do."""


class MarkerError(CourseError, ValueError):
    """A solution notebook's markers do not form closed, non-nested blocks."""


def course_root() -> Path:
    """The repository root: the folder holding solutions/ (searched upwards from the working
    directory)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "solutions").is_dir():
            return folder
    raise CourseError("Could not find the course's solutions/ folder above the current "
                      "directory. Run this from a checkout of the sae-minimal repository.")


def read_notebook(path: Path):
    """The notebook at ``path`` (nbformat 4), or a CourseError saying it is not one."""
    import nbformat

    try:
        with warnings.catch_warnings():   # e.g. missing cell ids: nbformat adds them itself
            warnings.simplefilter("ignore")
            nb = nbformat.read(path, as_version=4)
            nbformat.validate(nb)
    except OSError as e:
        raise CourseError(f"cannot read {path}: {e.strerror or e}.") from None
    except Exception as e:  # noqa: BLE001 -- nbformat raises many kinds for a broken file
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CourseError(f"{path} is not a valid notebook ({reason}). Restore it from git or "
                          "re-download it; if you edited it by hand, open it in Jupyter to find "
                          "the broken part.") from None
    return nb


def cell_label(index: int, cell) -> str:
    """'cell 3 (`def f(x):`)': the index in the notebook (from 0) and the cell's first line."""
    first = next((line.strip() for line in cell.source.split("\n") if line.strip()), "")
    return f"cell {index} (`{first[:40]}{'…' if len(first) > 40 else ''}`)"


# --- build ----------------------------------------------------------------------------------------
def _marker(line: str) -> tuple[str, str] | None:
    """('begin' or 'end', 'solution' or 'hidden') for a marker line, None for any other line; a
    MarkerError for a line that mentions a marker without being one (it could leak a solution)."""
    m = MARKER.match(line)
    if m:
        kind = "solution" if m.group(2).upper().startswith("S") else "hidden"
        return m.group(1).lower(), kind
    if MENTION.search(line):
        raise MarkerError(f"the line {line.strip()!r} mentions a marker but is not a marker line: "
                          f"put the marker on a line of its own ('{BEGIN}'), or reword the line.")
    return None


def _replace_blocks(source: str, replace: Callable[[str, str, list[str]], list[str]]) -> str:
    """``source`` with each marked block (markers included) replaced by
    ``replace(kind, indent of the BEGIN line, lines inside)``."""
    out: list[str] = []
    block = None   # (kind, indent, body, line number of BEGIN), while inside a block
    for number, line in enumerate(source.split("\n"), 1):
        marker = _marker(line)
        if marker is None:
            (block[2] if block else out).append(line)
        elif marker[0] == "begin":
            if block:
                raise MarkerError(f"line {number}: {line.strip()!r} inside the block opened on "
                                  f"line {block[3]}: close that block first (blocks do not nest).")
            block = (marker[1], line[: len(line) - len(line.lstrip())], [], number)
        elif block is None or block[0] != marker[1]:
            raise MarkerError(f"line {number}: {line.strip()!r} closes no open "
                              f"{marker[1]} block: add its BEGIN line above, or delete it.")
        else:
            out.extend(replace(*block[:3]))
            block = None
    if block:
        end = END if block[0] == "solution" else END_HIDDEN
        raise MarkerError(f"unclosed {block[0]} block opened on line {block[3]}: add '{end}' "
                          "where the block ends.")
    return "\n".join(out)


def exercise_source(source: str, cell_type: str) -> str:
    """A solution cell's source as the learner sees it."""
    def stub(kind: str, indent: str, body: list[str]) -> list[str]:
        if kind == "hidden":
            return []
        if cell_type == "markdown":
            return [indent + "*YOUR ANSWER HERE*"]
        hints = [line for line in body if line.strip().startswith("# HINT:")]
        return [indent + "# YOUR CODE HERE", *hints, indent + STUB]
    return _replace_blocks(source, stub)


def reading_source(source: str) -> str:
    """A solution cell's source with the markers (and hint comments) removed, solutions kept."""
    kept = _replace_blocks(source, lambda kind, indent, body: body)
    return "\n".join(line for line in kept.split("\n") if not line.strip().startswith("# HINT:"))


def _rebuild(nb, make_source: Callable[[object], str], clear_outputs: bool):
    """A copy of ``nb`` with each cell's source from make_source(cell); a MarkerError names the
    cell."""
    out = copy.deepcopy(nb)
    for index, cell in enumerate(out.cells):
        try:
            cell.source = make_source(cell)
        except MarkerError as e:
            raise MarkerError(f"{cell_label(index, cell)}: {e}") from None
        if clear_outputs and cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return out


def build_exercise(nb):
    out = _rebuild(nb, lambda cell: exercise_source(cell.source, cell.cell_type), True)
    for cell in out.cells:   # as nbgrader's release locks them: checker cells read-only, and no
        meta = cell.metadata.get("nbgrader", {})   # exercise cell can be deleted by accident
        if meta.get("solution"):
            cell.metadata["deletable"] = False
        elif meta.get("grade") or meta.get("locked"):
            cell.metadata.update(deletable=False, editable=False)
    return out


def build_reading(nb):
    return _rebuild(nb, lambda cell: reading_source(cell.source), False)


def build(root: Path | None = None, check_only: bool = False) -> list[str]:
    """Regenerate exercises/ and notebooks/ from solutions/. With check_only, write nothing and
    return the paths that are out of date. Every notebook is built in memory first: one bad
    notebook stops the build before any file is written."""
    import nbformat

    root = root or course_root()
    made, problems = {}, []
    for sol in sorted((root / "solutions").glob("*.ipynb")):
        try:
            nb = read_notebook(sol)
            for folder, builder in (("exercises", build_exercise), ("notebooks", build_reading)):
                made[root / folder / sol.name] = nbformat.writes(builder(nb)) + "\n"
        except CourseError as e:
            problems.append(f"{sol.relative_to(root)}: {e}" if isinstance(e, MarkerError)
                            else str(e))
    if problems:
        raise CourseError("build stopped, nothing was written: " + "; ".join(problems))
    stale = [target for target, text in made.items()
             if not target.exists() or target.read_text() != text]
    if not check_only:
        for target in stale:   # write a new file, then swap: an interrupted build leaves no half
            target.parent.mkdir(exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_text(made[target])
            os.replace(partial, target)
    return [str(target.relative_to(root)) for target in stale]


# --- nbgrader -------------------------------------------------------------------------------------
def grading_problems(nb) -> list[str]:
    """What keeps ``nbgrader autograde`` from grading a solution notebook's exercises: a checker
    call outside a locked test cell with points, a solution block in a cell nbgrader does not
    treat as a solution, a hint inside a block (nbgrader deletes it), a written answer sharing
    its editable cell with the question, a repeated grade_id."""
    from .runner import checker_calls

    problems, ids = [], []
    for index, cell in enumerate(nb.cells):
        meta, label = cell.metadata.get("nbgrader", {}), cell_label(index, cell)
        ids += [meta["grade_id"]] if "grade_id" in meta else []
        blocks: list[list[str]] = []   # the lines inside each marked block, collected:
        _replace_blocks(cell.source, lambda kind, indent, body: blocks.append(body) or [])
        if blocks and not meta.get("solution"):
            problems.append(f"{label} has a solution block but no nbgrader solution metadata")
        if cell.cell_type == "markdown" and blocks and _replace_blocks(cell.source, lambda *_: []).strip():
            problems.append(f"{label}: a written answer's cell holds text outside its solution block, "
                            "which the learner could delete with their answer: move the question into a "
                            "locked markdown cell above (and what follows into a cell below)")
        if any(line.strip().startswith("# HINT:") for body in blocks for line in body):
            problems.append(f"{label}: move its '# HINT:' lines above '{BEGIN}' (nbgrader "
                            "deletes what is inside the block)")
        if cell.cell_type == "code" and checker_calls(cell.source) and not (
                meta.get("grade") and meta.get("locked") and not meta.get("solution")
                and meta.get("points", 0) > 0):
            problems.append(f"{label} calls a checker but is not a locked nbgrader test cell "
                            "with points (grade, locked, points; not solution)")
    problems += [f"grade_id {g!r} is used twice" for g in sorted({g for g in ids
                                                                  if ids.count(g) > 1})]
    return problems


def nbgrader_course(target: Path, root: Path | None = None, names: list[str] | None = None,
                    force: bool = False) -> list[Path]:
    """Set up an nbgrader course directory in ``target``: ``source/NN_name/NN_name.ipynb`` for
    each solution notebook (one assignment each; ``names`` picks some, e.g. ["00", "02"]) and
    the course's ``nbgrader_config.py`` (teacher/). Returns the files written. A file that exists
    with other content is left alone: a CourseError, unless ``force`` (the config is never
    overwritten: yours may hold other settings)."""
    root = root or course_root()
    solutions = sorted((root / "solutions").glob("*.ipynb"))
    if names:
        def called(s: Path, name: str) -> bool:   # "00", "00_introduction" or its file name
            return name in (s.stem, s.name) or s.stem.startswith(f"{name}_")
        chosen = [s for s in solutions if any(called(s, n) for n in names)]
        unknown = [n for n in names if not any(called(s, n) for s in chosen)]
        if unknown:
            raise CourseError(f"no solution notebook called {', '.join(unknown)}: choose from "
                              f"{', '.join(s.stem for s in solutions)}.")
        solutions = chosen
    problems = [f"{s.name}: {p}" for s in solutions for p in grading_problems(read_notebook(s))]
    if problems:
        raise CourseError("not ready for nbgrader: " + "; ".join(problems))
    files = {target / "source" / s.stem / s.name: s.read_text() for s in solutions}
    clash = [path for path, text in files.items()
             if path.exists() and path.read_text() != text and not force]
    if clash:
        raise CourseError(f"these files differ from solutions/ (edited by you?): "
                          f"{', '.join(map(str, clash))}: move them away, or pass --force to "
                          "overwrite them.")
    config = target / "nbgrader_config.py"
    if not config.exists():
        files[config] = (root / "teacher" / "nbgrader_config.py").read_text()
    written = []
    for path, text in files.items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written
