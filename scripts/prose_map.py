"""What each number a notebook's prose quotes becomes when the notebook is executed again.

    python scripts/prose_map.py OLD.ipynb NEW.ipynb                     # report
    python scripts/prose_map.py OLD.ipynb NEW.ipynb --apply OUT.ipynb   # NEW, prose updated

OLD is the committed notebook, NEW the same notebook re-executed (e.g. after the reference SAEs were
rebuilt: 04-08 quote hundreds of their numbers). Each decimal number in OLD's markdown, as
``tests/test_prose_numbers.py`` reads them, is looked up in OLD's outputs: every place (cell,
output, n-th number in it) that prints a number rounding to it. The number NEW prints at the same
place, written at the prose's precision (and as a percentage where the prose has one), is its new
value. A quote that its places now map to different values, or that no output prints, is listed for
a person to decide; ``--apply`` rewrites only the unambiguous ones. A changed number can change the
sentence around it ("falls" may now rise): read every line the report marks "changed".
"""

from __future__ import annotations

import argparse
import sys
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_prose_numbers import (NOT_PRINTED, PRINTED, output_text, prose_quotes,  # noqa: E402
                                set_in_code)


def printed_numbers(nb) -> dict[tuple[int, int, int], str]:
    """{(cell, output, n): the n-th number that output prints} for every code cell's outputs."""
    places = {}
    for c, cell in enumerate(nb.cells):
        for o, out in enumerate(cell.get("outputs", []) if cell.cell_type == "code" else []):
            for n, m in enumerate(PRINTED.finditer(output_text(out))):
                places[c, o, n] = m.group(0)
    return places


MODES = (ROUND_HALF_UP, ROUND_HALF_EVEN)   # the prose may have rounded a tie either way


def written_as(value: str, quoted: str, percent: bool, scale: int, mode: str) -> str:
    """A printed ``value`` times ``scale`` (100: a fraction the prose gives as a percentage),
    rounded by ``mode`` to the precision of the prose's ``quoted``, in its form."""
    number = Decimal(value) * scale
    mantissa, _, exponent = quoted.partition("e")
    if exponent:                                    # 8.50e-03: the same count of digits
        digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
        return f"{float(number):.{digits}e}"
    step = Decimal(1).scaleb(Decimal(quoted).as_tuple().exponent)
    return str(number.quantize(step, rounding=mode)) + ("%" if percent else "")


def quote_map(old, new, allowed: dict[str, str] = {}) -> list[dict]:
    """One entry per quoted number of OLD's prose: cell, span, quoted text, "new" (the one value
    its places print in NEW, each read the way OLD's printed number gave the quote) or None, and
    "why" when there is none."""
    before, after = printed_numbers(old), printed_numbers(new)
    entries = []
    for i, m, quoted, percent in prose_quotes(old):
        entry = {"cell": i, "span": m.span(), "quoted": m.group(0), "new": None, "why": ""}
        entries.append(entry)
        values, found = set(), False
        for place, value in before.items():
            for scale in ((1, 100) if percent else (1,)):
                for mode in MODES:
                    if written_as(value, quoted, percent, scale, mode) != m.group(0):
                        continue
                    found = True
                    if place in after:
                        values.add(written_as(after[place], quoted, percent, scale, mode))
        if len(values) == 1:
            entry["new"] = values.pop()
        elif values:
            entry["why"] = "its places now print " + ", ".join(sorted(values))
        elif quoted in allowed or set_in_code(quoted, old):
            entry["new"] = m.group(0)       # a setting, or derived or quoted: as it stands
            entry["why"] = "not printed: listed as derived or quoted, or a setting in the code"
        else:
            entry["why"] = ("printed nowhere in OLD" if not found
                            else "its places are gone in NEW")
    return entries


def apply(new, entries: list[dict]):
    """NEW with each unambiguous quote replaced in its markdown (spans from the end backwards)."""
    for entry in sorted(entries, key=lambda e: (e["cell"], -e["span"][0])):
        if entry["new"] is not None and entry["new"] != entry["quoted"]:
            cell = new.cells[entry["cell"]]
            start, end = entry["span"]
            cell.source = cell.source[:start] + entry["new"] + cell.source[end:]
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--apply", metavar="OUT", help="write NEW with the prose updated to OUT")
    args = ap.parse_args()
    old, new = (nbformat.read(p, as_version=4) for p in (args.old, args.new))
    prose = [[c.source for c in nb.cells if c.cell_type == "markdown"] for nb in (old, new)]
    if prose[0] != prose[1] or len(old.cells) != len(new.cells):
        sys.exit("OLD and NEW must be the same notebook executed twice: their markdown or their "
                 "cells differ. Re-execute the committed notebook and compare with that.")
    entries = quote_map(old, new, NOT_PRINTED.get(Path(args.old).stem, {}))
    for e in entries:
        where = old.cells[e["cell"]].source[max(0, e["span"][0] - 40):e["span"][1]]
        state = ("same" if e["new"] == e["quoted"] else f"changed -> {e['new']}") if e["new"] \
            else f"CHECK ({e['why']})"
        print(f"cell {e['cell']:3d}  {e['quoted']:>10}  {state:<28} …{' '.join(where.split())}")
    if args.apply:
        if Path(args.apply).exists():
            sys.exit(f"{args.apply} exists; choose another name (nothing is overwritten).")
        nbformat.write(apply(new, entries), args.apply)
        print(f"wrote {args.apply}: {sum(e['new'] not in (None, e['quoted']) for e in entries)} "
              "numbers changed")


if __name__ == "__main__":
    main()
