"""The package's architecture: import contracts (import-linter) and no branching on method names.

The layers and the no-cycle rule are import-linter contracts in pyproject.toml (`lint-imports`,
also run by .ci/run): imports only point down (core, data, models, training | inference,
evaluation, experiments | viewer, cli; training and inference never import each other), and no
package's modules import each other in a cycle. Lazy imports inside functions count too.
Branches on method names outside the registry and the experiment method table are found with `ast`.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = "crackloc"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

def _method_names() -> frozenset[str]:
    """Every registered model and backbone name, read from the registries so the list cannot drift."""
    from crackloc.models.backbone import BACKBONES
    from crackloc.models.registry import available_models

    return frozenset(available_models()) | frozenset(BACKBONES)


METHOD_NAMES = _method_names()
NAME_TABLES = ("models/registry.py", "experiments/methods.py")  # the only places that may branch
COMPARE_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def _strings(node: ast.AST) -> list[str]:
    """String literals of a constant or of a tuple/list/set literal (dicts are tables: skipped)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _strings(elt)]
    return []


def _is_name_attr(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "name"


def _branch_reason(node: ast.AST) -> str | None:
    """Why a node is a branch on a method name, or None."""
    if isinstance(node, ast.Compare) and any(isinstance(op, COMPARE_OPS) for op in node.ops):
        sides = [node.left, *node.comparators]
        hits = sorted({s for side in sides for s in _strings(side) if s in METHOD_NAMES})
        if hits:
            return f"compares with method name {', '.join(map(repr, hits))}"
        if any(map(_is_name_attr, sides)) and any(_strings(side) for side in sides):
            return "compares `.name` with a string literal"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr == "startswith" and node.args \
            and any(s.startswith("ablation:") for s in _strings(node.args[0])):
        return 'calls .startswith("ablation:")'
    if isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue) \
            and set(_strings(node.pattern.value)) & METHOD_NAMES:
        return "matches on a method name"
    return None


def method_name_branches(root: Path, *, allowed: tuple[str, ...] = NAME_TABLES) -> list[str]:
    """`file:line: reason` for each branch on a method name outside the `allowed` files."""
    found: list[tuple[str, int, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in allowed or "__pycache__" in rel:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for node in ast.walk(tree):
            reason = _branch_reason(node)
            if reason:
                line = getattr(node, "lineno", None) or node.pattern.lineno
                found.append((rel, line, reason))
    return [f"{root.name}/{rel}:{line}: {reason}" for rel, line, reason in sorted(found)]


def _report(title: str, problems: list[str]) -> str:
    return f"{len(problems)} {title}:\n  " + "\n  ".join(problems)


# ---- the import contracts ---------------------------------------------------------------------


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is not installed (pip install -e '.[dev]')"
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": str(Path(sys.executable).parent)})


def test_the_import_contracts_hold():
    result = _lint_imports(ROOT.parent)
    assert result.returncode == 0 and "2 kept, 0 broken" in result.stdout, result.stdout[-3000:]


def test_the_contracts_catch_an_upward_import_and_a_cycle(tmp_path):
    """The same contracts on a fake crackloc: data importing inference, and a two-module cycle, are found."""
    pkg = _write(tmp_path, {**CLEAN, "data/folders.py": "from crackloc.inference import predict\n",
                            "models/a.py": "from crackloc.models import b\n",
                            "models/b.py": "from crackloc.models import a\n"})
    config = (ROOT.parent / "pyproject.toml").read_text(encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(config[config.index("[tool.importlinter]"):], encoding="utf-8")
    for name in ("config", "io", "tensors", "__main__", "cli/__init__", "evaluation/__init__",
                 "experiments/__init__", "viewer/__init__"):
        (pkg / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (pkg / f"{name}.py").touch()
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "crackloc.data is not allowed to import crackloc.inference" in result.stdout, result.stdout[-3000:]
    assert "No import cycles between the modules of any package BROKEN" in result.stdout, result.stdout[-3000:]


# ---- branches on method names -----------------------------------------------------------------


def test_no_branches_on_method_names():
    problems = method_name_branches(ROOT)
    assert not problems, _report(
        "branch(es) on method names outside models/registry.py and experiments/methods.py", problems)


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / PACKAGE
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text, encoding="utf-8")
    return pkg


CLEAN = {
    "__init__.py": "",
    "errors.py": "class CracklocError(Exception):\n    pass\n",
    "data/__init__.py": "from crackloc.data.folders import scan\n",
    "data/folders.py": "from crackloc.errors import CracklocError\n\ndef scan():\n    pass\n",
    "models/__init__.py": "",
    "models/net.py": "from ..data import folders\nfrom crackloc.data import scan\n",
    "training/__init__.py": "",
    "training/fit.py": "def fit():\n    import crackloc.models.net\n",
    "inference/__init__.py": "",
    "inference/predict.py": "from . import helpers\n",
    "inference/helpers.py": "NAMES = {'psol': 1}\n",
}


def test_method_name_branches_are_found(tmp_path):
    root = _write(tmp_path, {
        **CLEAN,
        "evaluation/evaluate.py": (
            "def f(cfg, name, method):\n"
            "    if cfg.name == 'anything':\n"
            "        pass\n"
            "    if name in ('psol', 'ts_cam'):\n"
            "        pass\n"
            "    if method.startswith('ablation:'):\n"
            "        pass\n"
            "    match name:\n"
            "        case 'psol':\n"
            "            pass\n"
            "    return {'psol': 1}[name] if name != 'other' else 0\n"
        ),
        "models/registry.py": "def g(cfg):\n    return cfg.name == 'psol'\n",
    })
    assert method_name_branches(root) == [
        "crackloc/evaluation/evaluate.py:2: compares `.name` with a string literal",
        "crackloc/evaluation/evaluate.py:4: compares with method name 'psol', 'ts_cam'",
        'crackloc/evaluation/evaluate.py:6: calls .startswith("ablation:")',
        "crackloc/evaluation/evaluate.py:9: matches on a method name",
    ]
