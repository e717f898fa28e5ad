"""The package's layers: imports point one way (course -> lm -> core; theory -> core), and the variant
files hold no speed code."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "sae_minimal"
LAYER_OF = {"course": "course", "lm": "lm", "theory": "theory"}
# which layers each layer may import from (the core imports only the core)
ALLOWED = {"core": {"core"}, "theory": {"theory", "core"}, "lm": {"lm", "core"},
           "course": {"course", "lm", "theory", "core"}}
VARIANTS = ["relu.py", "topk.py", "batchtopk.py", "jumprelu.py", "gated.py", "matryoshka.py"]


def _layer(module: str) -> str:
    """'sae_minimal.lm.lab' -> 'lm'; 'sae_minimal.topk' -> 'core'."""
    parts = module.split(".")
    return LAYER_OF.get(parts[1], "core") if len(parts) > 1 else "core"


def _imports(path: Path, root: Path = PKG) -> list[str]:
    """The sae_minimal modules a file imports (relative imports resolved)."""
    module = ".".join(("sae_minimal", *path.relative_to(root).with_suffix("").parts))
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if target == "sae_minimal" else [target]
            found += [n for n in names if n.startswith("sae_minimal")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("sae_minimal")]
    return found


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down_the_layers(path):
    here = _layer(".".join(("sae_minimal", *path.relative_to(PKG).parts)))
    bad = [m for m in _imports(path) if _layer(m) not in ALLOWED[here]]
    assert not bad, f"{path.relative_to(PKG)} ({here}) imports {bad}: allowed layers are {sorted(ALLOWED[here])}"


def test_layering_check_catches_an_upward_import(tmp_path):
    # The test above is only worth something if it sees a violation: a core file importing lm, relatively.
    (tmp_path / "lm").mkdir()
    (tmp_path / "train.py").write_text("from .lm.lab import Lab\nfrom . import metrics\n")
    (tmp_path / "lm" / "x.py").write_text("from ..course import checks\n")
    assert _imports(tmp_path / "train.py", tmp_path) == ["sae_minimal.lm.lab", "sae_minimal.metrics"]
    assert _imports(tmp_path / "lm" / "x.py", tmp_path) == ["sae_minimal.course"]
    assert _layer("sae_minimal.lm.lab") not in ALLOWED["core"]
    assert _layer("sae_minimal.course") not in ALLOWED["lm"]


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_files_hold_no_autograd_function(name):
    tree = ast.parse((PKG / name).read_text())
    functions = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                 and any("Function" in ast.unparse(b) for b in n.bases)]
    assert not functions, f"{name} defines autograd Functions {functions}: they belong in kernels.py"


def test_trainer_does_not_probe_the_sae_by_name():
    source = (PKG / "train.py").read_text()
    assert "getattr(sae" not in source and "hasattr(sae" not in source
