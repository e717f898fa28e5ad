"""Execute notebooks and grade exercises: ``course run``, ``course execute``, ``course check``.

``check`` grades against the solution notebook of the same name: every checker the solution calls
must be called and pass, so deleting a checker's cell cannot turn into "all checks passed". Every
cell has a time limit (``--timeout``, default 20 minutes: the full-mode notebooks' longest cell
takes up to ~15 minutes on 2 cores).
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
import tokenize
from pathlib import Path

from .build import CourseError, cell_label, read_notebook

CHECK_CALL = re.compile(r"\bcheck_\w+\(")
NUMBERED = re.compile(r"^\d\d_.*\.ipynb$")
CELL_TIMEOUT_S = 1200   # per cell; the slowest full-mode cell takes ~5-15 min on 2 cores
TIMED_OUT = "CellTimedOut"   # the error name execute() gives a cell stopped at the time limit
NOT_CALLED = "not called — the cell that calls it was deleted or changed"


# --- execution ------------------------------------------------------------------------------------
def execute(path: Path, *, timeout: int = CELL_TIMEOUT_S, allow_errors: bool = False,
            fast: bool = False):
    """Execute a notebook in its own folder with the current Python; returns the executed
    notebook. A cell running past ``timeout`` seconds is interrupted (its output ends in
    KeyboardInterrupt): with allow_errors the next cell runs, else a CourseError names it."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    nb = read_notebook(path)
    env_before = os.environ.get("SAE_MINIMAL_FAST")
    os.environ["SAE_MINIMAL_FAST"] = "1" if fast else env_before or "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    current = [0]   # the index of the cell being run, for the messages below
    timed_out = {"ename": TIMED_OUT, "evalue": f"the cell ran longer than {timeout} s",
                 "traceback": []}

    def on_cell_start(cell, cell_index: int) -> None:
        current[0] = cell_index

    def on_cell_error(cell, cell_index: int, execute_reply: dict) -> None:
        if execute_reply["content"].get("ename") == TIMED_OUT:   # say so in the cell's outputs
            cell.outputs.append(nbformat.v4.new_output("error", **timed_out))

    try:   # at the limit: interrupt the kernel, and do not wait for code that ignores that
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                allow_errors=allow_errors, interrupt_on_timeout=True,
                                error_on_timeout=timed_out, on_cell_start=on_cell_start,
                                on_cell_error=on_cell_error,
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        client.execute()
    except CellExecutionError as e:
        if e.ename != TIMED_OUT:
            if _error(nb.cells[current[0]]) is None:
                raise
            raise CourseError(f"{path}: {_describe_error(nb.cells, current[0])}.") from None
        raise CourseError(f"{path}: {cell_label(current[0], nb.cells[current[0]])} ran longer "
                          f"than the limit of {timeout} s per cell: an infinite loop? If it only "
                          "needs longer, pass --timeout SECONDS.") from None
    except DeadKernelError:
        raise CourseError(f"{path}: the kernel died while running "
                          f"{cell_label(current[0], nb.cells[current[0]])} (out of memory?). "
                          "Try --fast, or close other programs.") from None
    finally:
        if env_before is None:
            os.environ.pop("SAE_MINIMAL_FAST", None)
        else:
            os.environ["SAE_MINIMAL_FAST"] = env_before
    return nb


def run(folder: Path, fast: bool, timeout: int = CELL_TIMEOUT_S) -> int:
    """Execute every numbered notebook in ``folder`` in order; print a table; return the number of
    failures."""
    from tqdm.auto import tqdm

    paths = sorted(p for p in folder.glob("*.ipynb") if NUMBERED.match(p.name))
    if not paths:
        raise CourseError(f"No numbered notebooks (00_*.ipynb, ...) in {folder}.")
    rows, failures = [], 0
    for path in tqdm(paths, desc="notebooks", unit="nb"):
        t0 = time.perf_counter()
        try:
            execute(path, fast=fast, timeout=timeout)
            status = "ok"
        except CourseError as e:
            status, failures = f"FAILED: {e}", failures + 1
        except Exception as e:  # noqa: BLE001 -- report and go on to the next notebook
            status = (f"FAILED: {type(e).__name__}: "
                      f"{str(e).strip().splitlines()[-1][:80] if str(e).strip() else ''}")
            failures += 1
        rows.append((path.name, status, time.perf_counter() - t0))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'notebook':<{width}}  {'runtime':>8}  status   ({'fast' if fast else 'full'} mode)")
    for name, status, secs in rows:
        print(f"{name:<{width}}  {secs:>7.1f}s  {status}")
    print(f"{'total':<{width}}  {sum(r[2] for r in rows):>7.1f}s  "
          f"{len(rows) - failures} ok, {failures} failed")
    return failures


# --- check ----------------------------------------------------------------------------------------
def checker_calls(source: str) -> list[str]:
    """The checkers a cell's code calls (``check_x(``), in order, without repeats; calls inside
    comments and strings and ``def check_x(`` do not count."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                  if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
        names = [t.string for before, t, after in zip([None, *tokens], tokens, tokens[1:])
                 if t.type == tokenize.NAME and t.string.startswith("check_")
                 and after.string == "(" and not (before and before.string == "def")]
    except (tokenize.TokenError, SyntaxError):   # unbalanced brackets: fall back to the text
        code = "\n".join(line for line in source.split("\n") if not line.lstrip().startswith("#"))
        names = [m.group(0)[:-1] for m in CHECK_CALL.finditer(code)]
    return list(dict.fromkeys(names))


def solution_for(path: Path) -> Path | None:
    """The solution notebook a learner's notebook is graded against: solutions/<same name>, or the
    one solution with the same number (``03_l1_shrinkage-Copy1.ipynb``); searched above the
    notebook and above the working directory. None if there is none."""
    number = re.match(r"\d\d_", path.name)
    places = (path.resolve().parent, *path.resolve().parents, Path.cwd(), *Path.cwd().parents)
    for folder in dict.fromkeys(place / "solutions" for place in places):
        if (folder / path.name).is_file():
            return folder / path.name
        same_number = sorted(folder.glob(f"{number.group(0)}*.ipynb")) if number else []
        if len(same_number) == 1:
            return same_number[0]
    return None


def expected_checkers(path: Path) -> list[str] | None:
    """The checkers the solution of ``path`` calls, in order (None: no solution to compare)."""
    solution = solution_for(path)
    if solution is None:
        return None
    nb = read_notebook(solution)
    return list(dict.fromkeys(name for cell in nb.cells if cell.cell_type == "code"
                              for name in checker_calls(cell.source)))


def check(path: Path, fast: bool = False,
          timeout: int = CELL_TIMEOUT_S) -> list[tuple[str, str]]:
    """Execute a learner's notebook (continuing past errors) and report each checker call's
    outcome, then each checker the solution calls that this notebook does not (as not called)."""
    expected = expected_checkers(path) or []
    nb = execute(path, allow_errors=True, fast=fast, timeout=timeout)
    results = [(name, _outcome(nb.cells, index, name, timeout))
               for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
               for name in checker_calls(cell.source)]
    called = {name for name, _ in results}
    return results + [(name, NOT_CALLED) for name in expected if name not in called]


def _error(cell):
    return next((o for o in cell.get("outputs", []) if o.output_type == "error"), None)


def _describe_error(cells, index: int) -> str:
    """What went wrong in cell ``index``, one line; a syntax error with its line."""
    cell, error = cells[index], _error(cells[index])
    if error.ename in ("SyntaxError", "IndentationError", "TabError"):
        # the line is in the value ("invalid syntax (123.py, line 2)") or else in the traceback
        traceback = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(error.get("traceback", [])))
        line = (re.search(r"line (\d+)\)?$", error.evalue)
                or re.search(r"line (\d+)", traceback))
        reason = re.sub(r"\s*\([^()]*line \d+\)$", "", error.evalue)
        lines = cell.source.split("\n")
        if line and 1 <= int(line.group(1)) <= len(lines):
            where = f"line {line.group(1)}: `{lines[int(line.group(1)) - 1].strip()[:60]}`"
        else:
            where = f"line {line.group(1)}" if line else "somewhere"
        return f"{error.ename} in {cell_label(index, cell)}, {where} ({reason})"
    message = error.evalue.strip().split("\n")[0][:120]
    return f"{cell_label(index, cell)} raised {error.ename}: {message}"


def _earlier_failure(cells, index: int, name_error) -> str | None:
    """For a NameError in cell ``index``: the earlier cell whose failure most likely caused it
    (the last failed cell mentioning the missing name, else the last failed cell)."""
    failed = [i for i in range(index) if cells[i].cell_type == "code" and _error(cells[i])]
    missing = re.search(r"name '(\w+)' is not defined", name_error.evalue)
    naming = [i for i in failed if missing and re.search(rf"\b{missing.group(1)}\b",
                                                         cells[i].source)]
    culprit = (naming or failed or [None])[-1]
    return None if culprit is None else _describe_error(cells, culprit)


def _outcome(cells, index: int, name: str, timeout: int = CELL_TIMEOUT_S) -> str:
    from .checks import PASS_MARK

    cell = cells[index]
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    if f"{PASS_MARK} {name}:" in text:
        return "passed"
    error = _error(cell)
    if error is not None:
        if error.ename in ("KeyboardInterrupt", TIMED_OUT):   # execute() stopped it at the limit
            return (f"FAILED: the cell did not finish within {timeout} s: an infinite loop? "
                    "(If it only needs longer, pass --timeout SECONDS.)")
        if error.ename in ("SyntaxError", "IndentationError", "TabError"):
            return f"FAILED: {_describe_error(cells, index)}: fix it and check again"
        if error.ename == "NameError" and (earlier := _earlier_failure(cells, index, error)):
            return (f"FAILED: an earlier cell failed, so this one could not run: {earlier}: "
                    "fix that cell and check again")
        other = re.match(r"(check_\w+): ", error.evalue)
        if other and other.group(1) != name:
            return f"not run ({other.group(1)} failed before it in the same cell)"
        if "NotImplementedError" in error.evalue:
            return "not attempted (stub still raises NotImplementedError)"
        message = error.evalue.split(f"{name}: ", 1)[-1]
        return f"FAILED: {error.ename}: {message[:160]}"
    if not cell.outputs and cell.get("execution_count") is None:
        return "not run (an earlier error stopped it)"
    return "no result (did the cell run?)"


def print_check(path: Path, fast: bool, timeout: int) -> int:
    read_notebook(path)   # a broken file: say so before anything else
    if solution_for(path) is None:
        print(f"note: no solutions/{path.name} found above {path.resolve().parent} or here, so a "
              "deleted checker call cannot be noticed: keep the notebook's original name and run "
              "this inside the course repository.", file=sys.stderr)
    results = check(path, fast=fast, timeout=timeout)
    if not results:
        print(f"{path} calls no checkers.")
        return 1
    width = max(len(n) for n, _ in results)
    for name, outcome in results:
        print(f"{name:<{width}}  {outcome}")
    passed = sum(o == "passed" for _, o in results)
    print(f"{passed}/{len(results)} checks passed")
    return 0 if passed == len(results) else 1
