"""Screenshot every committed notebook the way a reader sees it, and flag what renders badly.

    python scripts/screenshot_reading_copies.py [OUT] [--folders notebooks ...] [--only 01]

For maintainers, not part of the test suite (tests/test_reading_copies.py checks the notebook
files; this checks what a browser draws from them). Two renderings of each notebook:

    OUT/lab/<folder>/<name>/NN.png    JupyterLab (opened in a throwaway copy; no cell is run)
    OUT/html/<folder>/<name>/NN.png   `jupyter nbconvert --to html`, what nbviewer shows

one PNG per screenful, top to bottom, and OUT/report.txt: per notebook the number of figures, and
anything that reads as broken in the drawn page: a frozen progress bar ("0%| | 0/586"), a
widget's text fallback ("interactive(children=...", "Loading widget..."), a `# NBVAL_` line, a
math error or TeX left unrendered, literal asterisks around text, U+FFFD in an output, stderr
output. Look at the PNGs too: only a reader can tell whether a figure is where the text promises it.

Needs (the Python running this script):
    pip install playwright          # the Python package only; no `playwright install`
    a Chromium or Chrome binary     # Debian: apt-get install chromium   (--chromium PATH)
    jupyterlab + nbconvert          # the course environment: pip install ".[course]" (--jupyter)
Offline, nbconvert's HTML loads MathJax from a CDN and shows raw TeX; point it at a local copy:
    npm install mathjax@2 && ... --mathjax node_modules/mathjax/MathJax.js

OUT defaults to a folder in the system's temp directory, outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("notebooks", "exercises", "solutions")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# JupyterLab settings for the throwaway server: lay out every cell (no virtual scrolling, so a
# screenful is complete when it is taken) and no news pop-up over the first screenshot.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
MATHJAX_CONFIG = "?config=TeX-AMS_CHTML-full,Safe"

# Run in the page: what a reader would call broken, read from the drawn text (innerText).
FINDINGS_JS = r"""(sel) => {
  const text = (q) => Array.from(document.querySelectorAll(q)).map(e => e.innerText);
  const outputs = text(sel.outputs), inputs = text(sel.inputs);
  const markdown = Array.from(document.querySelectorAll(sel.markdown)).map(e => {
    const c = e.cloneNode(true);
    c.querySelectorAll('code, pre, mjx-container, .MathJax, .MathJax_Display, script')
     .forEach(x => x.remove());
    return c.textContent; });
  const found = [];
  const add = (kind, t) => found.push(kind + ': ' + t.trim().split('\n')[0].slice(0, 90));
  for (const t of outputs) {
    if (/\d+%\|/.test(t)) add('progress bar', t.match(/.{0,40}\d+%\|.{0,30}/)[0]);
    if (/\uFFFD/.test(t)) add('U+FFFD in an output', t.match(/.{0,40}\uFFFD.{0,30}/)[0]);
    if (/interactive\(children=|IntSlider\(|HBox\(children=|Loading widget|Error displaying widget/
        .test(t)) add('widget text', t);
  }
  for (const t of inputs) if (/NBVAL_/.test(t)) add('nbval directive in a cell', t);
  for (const t of markdown) {
    const raw = t.match(/\$\$|\\(frac|begin|mathbb|sum|left|right)\b|(^|\s)\$[^$\s][^$]*\$/);
    if (raw) add('TeX left unrendered', t.slice(Math.max(0, raw.index - 30), raw.index + 50));
    const stars = t.match(/(^|\s)\*\*?\w|[\w.?!]\*\*?($|\s|[;,])/);
    if (stars) add('literal asterisks', t.slice(stars.index, stars.index + 80));
  }
  const mathErrors = document.querySelectorAll('mjx-merror, .MathJax_Error, .merror').length;
  if (mathErrors) found.push('math errors: ' + mathErrors);
  for (const t of text(sel.stderr)) add('stderr', t);
  const images = Array.from(document.querySelectorAll(sel.images));
  return {found, figures: images.length,
          unloaded: images.filter(i => !i.complete || i.naturalWidth === 0).length};
}"""
# JupyterLab and nbconvert's "lab" template share these class names.
SELECTORS = {"outputs": ".jp-OutputArea-output", "inputs": ".jp-InputArea-editor",
             "markdown": ".jp-MarkdownOutput", "images": ".jp-OutputArea-output img",
             "stderr": ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"}
SCROLLER = {"lab": ".jp-WindowedPanel-outer", "html": None}   # None: the page itself scrolls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_jupyter(given: str | None) -> str:
    candidates = [given] if given else [str(Path(sys.executable).with_name("jupyter")),
                                        str(ROOT / ".venv" / "bin" / "jupyter"),
                                        shutil.which("jupyter") or ""]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    sys.exit("No `jupyter` found next to this Python, in .venv/ or on PATH: install the course "
             "environment (pip install \".[course]\") or pass --jupyter PATH.")


def start_lab(jupyter: str, root: Path, scratch: Path) -> tuple[subprocess.Popen, str]:
    """A JupyterLab server on ``root`` with its own settings, no token; returns (process, url)."""
    settings = scratch / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port = free_port()
    cmd = [jupyter, "lab", "--no-browser", "--ServerApp.token=", "--ServerApp.password=",
           "--ServerApp.disable_check_xsrf=True",   # a throwaway server on 127.0.0.1
           f"--port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={settings}",
           f"--LabApp.workspaces_dir={scratch / 'lab-workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(scratch / "lab.log", "w")   # noqa: SIM115 -- open while the server runs
    lab = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        if lab.poll() is not None:
            sys.exit(f"JupyterLab exited (code {lab.returncode}); see {scratch / 'lab.log'}.")
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            return lab, url
        except OSError:
            time.sleep(1)
    lab.terminate()
    sys.exit(f"JupyterLab did not answer on {url} within 2 minutes; see {scratch / 'lab.log'}.")


def stop_kernels(url: str) -> None:
    """Opening a notebook in JupyterLab starts its kernel; shut it down again."""
    with urllib.request.urlopen(f"{url}/api/sessions") as response:
        sessions = json.load(response)
    for session in sessions:
        request = urllib.request.Request(f"{url}/api/sessions/{session['id']}", method="DELETE")
        urllib.request.urlopen(request).close()


def wait_until_drawn(page, images: str) -> None:
    """Until every figure has loaded and the page has stopped changing."""
    page.wait_for_load_state("networkidle")
    page.wait_for_function(f"""() => Array.from(document.querySelectorAll("{images}"))
                               .every(i => i.complete)""", timeout=60_000)
    page.wait_for_timeout(1500)   # MathJax typesets after load


def screenshot_sections(page, out: Path, scroller: str | None) -> int:
    """One PNG per screenful, scrolling ``scroller`` (or the page); returns how many."""
    out.mkdir(parents=True, exist_ok=True)
    target = f"document.querySelector('{scroller}')" if scroller else "document.scrollingElement"
    # Where the last cell ends (JupyterLab lets you scroll a screenful past it: not worth a shot)
    bottom, view = page.evaluate(f"""() => {{
        const s = {target}, cells = document.querySelectorAll('.jp-Cell');
        const last = cells.length ? cells[cells.length - 1].getBoundingClientRect().bottom
                                    - s.getBoundingClientRect().top + s.scrollTop : s.scrollHeight;
        return [Math.min(last, s.scrollHeight), s.clientHeight]; }}""")
    step = max(view - 60, 100)   # a strip of overlap, so no line is cut in both shots
    top, count = 0, 0
    while True:
        page.evaluate(f"() => {{ {target}.scrollTop = {top}; }}")
        page.wait_for_timeout(250)
        count += 1
        page.screenshot(path=str(out / f"{count:02d}.png"))
        if top + view >= bottom:
            return count
        top += step


def export_html(jupyter: str, notebook: Path, out: Path, mathjax: str | None) -> Path:
    cmd = [jupyter, "nbconvert", "--to", "html", "--output-dir", str(out), str(notebook)]
    if mathjax:
        cmd.append(f"--HTMLExporter.mathjax_url={mathjax}")
    subprocess.run(cmd, check=True, capture_output=True)
    return out / f"{notebook.stem}.html"


def mathjax_url(given: str | None) -> str | None:
    if not given or "://" in given:
        return given
    path = Path(given).resolve()
    if not path.is_file():
        sys.exit(f"--mathjax {given}: no such file (expected .../mathjax/MathJax.js, MathJax 2).")
    return path.as_uri() + MATHJAX_CONFIG


def render(page, mode: str, path: Path, copies: Path, url: str, args) -> list[str]:
    """Open one notebook in ``mode``, screenshot it, and return its report lines."""
    if mode == "lab":
        page.goto(f"{url}/doc/tree/{path.as_posix()}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    else:
        html = export_html(args.jupyter, copies / path, copies.parent / "html" / path.parent,
                           args.mathjax)
        page.goto(html.as_uri())
    wait_until_drawn(page, SELECTORS["images"])
    result = page.evaluate(FINDINGS_JS, SELECTORS)
    out = args.out / mode / path.parent / path.stem
    if out.exists():
        shutil.rmtree(out)
    shots = screenshot_sections(page, out, SCROLLER[mode])
    if mode == "lab":
        stop_kernels(url)
    unloaded = f", {result['unloaded']} NOT LOADED" if result["unloaded"] else ""
    head = f"{mode:4}  {path}: {shots} screenshots, {result['figures']} figures{unloaded}"
    return [head] + [f"        {finding}" for finding in result["found"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", type=Path,
                    default=Path(tempfile.gettempdir()) / "sae_minimal_screenshots")
    ap.add_argument("--folders", nargs="+", default=list(FOLDERS), choices=FOLDERS)
    ap.add_argument("--only", default="", help="only notebooks whose name contains this")
    ap.add_argument("--modes", nargs="+", default=["lab", "html"], choices=["lab", "html"])
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--jupyter", help="the jupyter command (default: next to this Python, .venv)")
    ap.add_argument("--mathjax", help="MathJax 2 for the HTML export: a URL or a local MathJax.js")
    ap.add_argument("--size", default="1280x1000", help="window size, WIDTHxHEIGHT")
    args = ap.parse_args()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("Needs the playwright package: pip install playwright (no browser download: "
                 "this script uses --chromium).")
    if not Path(args.chromium).is_file():
        sys.exit(f"No Chromium at {args.chromium}: apt-get install chromium, or pass --chromium.")
    if args.out.resolve().is_relative_to(ROOT):
        print(f"note: writing inside the repository ({args.out}); do not commit the PNGs.")
    args.jupyter, args.mathjax = find_jupyter(args.jupyter), mathjax_url(args.mathjax)
    width, height = map(int, args.size.split("x"))
    notebooks = [p.relative_to(ROOT) for folder in args.folders
                 for p in sorted((ROOT / folder).glob("[0-9][0-9]_*.ipynb")) if args.only in p.name]
    if not notebooks:
        sys.exit("No notebook matches.")

    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix="reading-copies-") as tmp:
        scratch = Path(tmp)
        copies = scratch / "copies"   # JupyterLab and nbconvert never touch the repository
        for path in notebooks:
            (copies / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / path, copies / path)
        lab, url = start_lab(args.jupyter, copies, scratch) if "lab" in args.modes else (None, "")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch_persistent_context(
                    str(scratch / "chromium-profile"), executable_path=args.chromium,
                    args=CHROMIUM_FLAGS, headless=True, viewport={"width": width, "height": height})
                page = browser.new_page()
                for path in notebooks:
                    for mode in args.modes:
                        lines = render(page, mode, path, copies, url, args)
                        print(*lines, sep="\n", flush=True)
                        report += lines
                browser.close()
        finally:
            if lab is not None:
                lab.terminate()
                lab.wait(timeout=30)
    if not args.mathjax and any("TeX left unrendered" in line for line in report):
        report.append("note: nbconvert's HTML loads MathJax from a CDN; offline, pass --mathjax "
                      "(see the top of this script).")
        print(report[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.txt").write_text("\n".join(report) + "\n")
    print(f"PNGs and report.txt in {args.out}")


if __name__ == "__main__":
    main()
