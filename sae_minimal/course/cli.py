"""The course tooling: build exercises from solutions, run every notebook, self-grade an exercise
notebook.

    python -m sae_minimal.course build            # solutions/ -> exercises/ (stubs) and
                                                  # notebooks/ (reading copy)
    python -m sae_minimal.course run [--fast]     # execute notebooks/ in order, print a
                                                  # status/runtime table
    python -m sae_minimal.course check exercises/03_l1_shrinkage.ipynb   # which checkers pass,
                                                                         # one line each
    python -m sae_minimal.course execute solutions/00_introduction.ipynb  # re-execute in place
                                                                          # (maintainers)
    python -m sae_minimal.course demo [--tokens N]  # a first SAE on synthetic data
                                                    # (= python -m sae_minimal.course.demo)

One source of truth: the solution notebooks in ``solutions/``, written with nbgrader's markers.

    ### BEGIN SOLUTION            (in code or Markdown cells; lines starting "# HINT:" are kept
                                   as hints)
    ### END SOLUTION
    ### BEGIN HIDDEN TESTS        (removed from the exercise entirely)
    ### END HIDDEN TESTS

``build`` writes ``exercises/`` (each solution block replaced by a stub, outputs cleared) and
``notebooks/`` (markers stripped, outputs kept). ``SAE_MINIMAL_FAST=1`` (``run --fast``) asks
notebooks for shorter training.

(Slightly over the package's ~250-line guide: build, run and check share the notebook plumbing,
and a maintainer changing one needs to see the others.)
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
import time
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
STUB = "raise NotImplementedError()"
CHECK_CALL = re.compile(r"\bcheck_\w+\(")
NUMBERED = re.compile(r"^\d\d_.*\.ipynb$")


def _root() -> Path:
    """The repository root: the folder holding solutions/ (searched upwards from the working
    directory)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "solutions").is_dir():
            return folder
    raise FileNotFoundError("Could not find the course's solutions/ folder above the current "
                            "directory. Run this from a checkout of the sae-minimal repository.")


# --- build ----------------------------------------------------------------------------------------
def _strip_block(lines: list[str], begin: str, end: str, replace) -> list[str]:
    out, block = [], None
    for line in lines:
        stripped = line.strip()
        if stripped == begin:
            block = [line]
        elif stripped == end and block is not None:
            indent = block[0][: len(block[0]) - len(block[0].lstrip())]
            out.extend(replace(indent, block[1:]))
            block = None
        elif block is not None:
            block.append(line)
        else:
            out.append(line)
    if block is not None:
        raise ValueError(f"unclosed '{begin}' block")
    return out


def exercise_source(source: str, cell_type: str) -> str:
    """A solution cell's source as the learner sees it."""
    lines = _strip_block(source.split("\n"), BEGIN_HIDDEN, END_HIDDEN, lambda indent, body: [])

    def stub(indent: str, body: list[str]) -> list[str]:
        hints = [line for line in body if line.strip().startswith("# HINT:")]
        if cell_type == "markdown":
            return [indent + "*YOUR ANSWER HERE*"]
        return [indent + "# YOUR CODE HERE", *hints, indent + STUB]
    return "\n".join(_strip_block(lines, BEGIN, END, stub))


def reading_source(source: str) -> str:
    """A solution cell's source with the markers (and hint comments) removed, solutions kept."""
    keep = [line for line in source.split("\n")
            if line.strip() not in (BEGIN, END, BEGIN_HIDDEN, END_HIDDEN)
            and not line.strip().startswith("# HINT:")]
    return "\n".join(keep)


def build_exercise(nb):
    ex = copy.deepcopy(nb)
    for cell in ex.cells:
        cell.source = exercise_source(cell.source, cell.cell_type)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return ex


def build_reading(nb):
    rd = copy.deepcopy(nb)
    for cell in rd.cells:
        cell.source = reading_source(cell.source)
    return rd


def build(root: Path | None = None, check_only: bool = False) -> list[str]:
    """Regenerate exercises/ and notebooks/ from solutions/. With check_only, write nothing and
    return the paths that are out of date."""
    import nbformat

    root = root or _root()
    stale = []
    for sol in sorted((root / "solutions").glob("*.ipynb")):
        nb = nbformat.read(sol, as_version=4)
        for folder, made in (("exercises", build_exercise(nb)), ("notebooks", build_reading(nb))):
            target = root / folder / sol.name
            text = nbformat.writes(made) + "\n"
            if not target.exists() or target.read_text() != text:
                stale.append(str(target.relative_to(root)))
                if not check_only:
                    target.parent.mkdir(exist_ok=True)
                    target.write_text(text)
    return stale


# --- execution ------------------------------------------------------------------------------------
def execute(path: Path, *, timeout: int = 1800, allow_errors: bool = False, fast: bool = False):
    """Execute a notebook in its own folder with the current Python; returns the executed
    notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("SAE_MINIMAL_FAST")
    os.environ["SAE_MINIMAL_FAST"] = "1" if fast else env_before or "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                allow_errors=allow_errors,
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("SAE_MINIMAL_FAST", None)
        else:
            os.environ["SAE_MINIMAL_FAST"] = env_before
    return nb


def run(folder: Path, fast: bool) -> int:
    """Execute every numbered notebook in ``folder`` in order; print a table; return the number of
    failures."""
    from tqdm.auto import tqdm

    paths = sorted(p for p in folder.glob("*.ipynb") if NUMBERED.match(p.name))
    if not paths:
        raise FileNotFoundError(f"No numbered notebooks (00_*.ipynb, ...) in {folder}.")
    rows, failures = [], 0
    for path in tqdm(paths, desc="notebooks", unit="nb"):
        t0 = time.perf_counter()
        try:
            execute(path, fast=fast)
            status = "ok"
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


def check(path: Path, fast: bool = False) -> list[tuple[str, str]]:
    """Execute a learner's notebook (continuing past errors) and report each checker call's
    outcome."""
    nb = execute(path, allow_errors=True, fast=fast)
    results = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for name in dict.fromkeys(m.group(0)[:-1] for m in CHECK_CALL.finditer(cell.source)):
            results.append((name, _outcome(cell, name)))
    return results


def _outcome(cell, name: str) -> str:
    from .checks import PASS_MARK

    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    if f"{PASS_MARK} {name}" in text:
        return "passed"
    for o in cell.outputs:
        if o.output_type == "error":
            if "NotImplementedError" in o.evalue:
                return "not attempted (stub still raises NotImplementedError)"
            message = o.evalue.split(f"{name}: ", 1)[-1]
            return f"FAILED: {o.ename}: {message[:160]}"
    if not cell.outputs and cell.get("execution_count") is None:
        return "not run (an earlier error stopped it)"
    return "no result (did the cell run?)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sae_minimal.course", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="regenerate exercises/ and notebooks/ from solutions/")
    b.add_argument("--check", action="store_true",
                   help="only report what is out of date (exit 1 if any)")
    r = sub.add_parser("run", help="execute every notebook in order and print a status table")
    r.add_argument("--fast", action="store_true",
                   help="short training (SAE_MINIMAL_FAST=1), as CI does")
    r.add_argument("--dir", default=None, help="folder of notebooks (default: notebooks/)")
    c = sub.add_parser("check", help="execute an exercise notebook and report each checker")
    c.add_argument("notebook")
    c.add_argument("--fast", action="store_true")
    e = sub.add_parser("execute", help="re-execute notebooks in place, keeping their outputs")
    e.add_argument("notebooks", nargs="+")
    e.add_argument("--fast", action="store_true")
    sub.add_parser("demo", help="train a first SAE on synthetic data (under a minute)",
                   add_help=False)
    args, rest = ap.parse_known_args(argv)
    if args.cmd == "demo":
        from .demo import main as demo
        demo(rest)
        return 0
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")

    if args.cmd == "build":
        stale = build(check_only=args.check)
        print("\n".join(stale) if stale else "exercises/ and notebooks/ are up to date")
        return 1 if (args.check and stale) else 0
    if args.cmd == "run":
        folder = Path(args.dir) if args.dir else _root() / "notebooks"
        return 1 if run(folder, args.fast) else 0
    if args.cmd == "check":
        path = Path(args.notebook)
        if not path.is_file():
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
        results = check(path, fast=args.fast)
        if not results:
            print(f"{path} calls no checkers.")
            return 1
        width = max(len(n) for n, _ in results)
        for name, outcome in results:
            print(f"{name:<{width}}  {outcome}")
        passed = sum(o == "passed" for _, o in results)
        print(f"{passed}/{len(results)} checks passed")
        return 0 if passed == len(results) else 1
    if args.cmd == "execute":
        import nbformat
        for nb_path in map(Path, args.notebooks):
            t0 = time.perf_counter()
            nbformat.write(execute(nb_path, fast=args.fast), nb_path)
            print(f"{nb_path}: executed in {time.perf_counter() - t0:.1f}s")
        return 0
    return 2


