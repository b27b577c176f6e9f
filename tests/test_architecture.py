"""The package's architecture: import contracts (import-linter) and no branching on method names.

The layers and the no-cycle rule are import-linter contracts in pyproject.toml (`lint-imports`,
also run by .ci/run): imports only point down (core, imageops, data, models, training | inference,
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
    """Every registered model, backbone and pseudo-label source name, read from the registries so
    the list cannot drift."""
    from crackloc.models.backbone import BACKBONES
    from crackloc.models.registry import available_models
    from crackloc.training.sources import SOURCES

    return frozenset(available_models()) | frozenset(BACKBONES) | frozenset(SOURCES)


METHOD_NAMES = _method_names()
NAME_TABLES = ("models/registry.py", "experiments/methods.py", "training/sources.py")  # the only places that may branch
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
    for name in ("config", "io", "tensors", "imageops/__init__", "__main__", "cli/__init__", "evaluation/__init__",
                 "experiments/__init__", "viewer/__init__", "change/__init__"):
        (pkg / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (pkg / f"{name}.py").touch()
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "crackloc.data is not allowed to import crackloc.inference" in result.stdout, result.stdout[-3000:]
    assert "No import cycles between the modules of any package BROKEN" in result.stdout, result.stdout[-3000:]


# ---- branches on method names -----------------------------------------------------------------


def test_no_branches_on_method_names():
    problems = method_name_branches(ROOT)
    assert not problems, _report(f"branch(es) on method names outside {', '.join(NAME_TABLES)}", problems)


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


# ---- one output writer; no private names outside the package ----------------------------------

WRITER = "inference/outputs.py"  # builds every record and PNG set, appends every record
WRITER_CALLS = ("RecordWriter", "heatmap_stats", "record_maker")


def writer_copies(root: Path) -> list[str]:
    """`file:line: reason` for each place outside the writer that builds or appends a record itself."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel == WRITER:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in WRITER_CALLS:
                    problems.append(f"{rel}:{node.lineno}: calls {name}")
            elif isinstance(node, ast.Dict) and "crack_probability" in _strings_of(node.keys) \
                    and "heatmap" in _strings_of(node.keys):
                problems.append(f"{rel}:{node.lineno}: builds a record")
            elif isinstance(node, ast.Constant) and node.value == "predictions.jsonl" and rel != "inference/outdir.py":
                problems.append(f"{rel}:{node.lineno}: names the records file")
    return problems


def _strings_of(nodes: list) -> set[str]:
    return {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def test_one_output_writer():
    problems = writer_copies(ROOT)
    assert not problems, _report(f"record or PNG writing outside {WRITER}", problems)


def test_writer_copies_are_found(tmp_path):
    root = _write(tmp_path, {**CLEAN, "viewer/folders.py": (
        "def f(w, p, m):\n"
        "    w = RecordWriter('x')\n"
        "    rec = {'path': p, 'crack_probability': 0.5, 'heatmap': heatmap_stats(m)}\n"
        "    return open('predictions.jsonl', 'a')\n")})
    assert sorted(p.split(": ", 1)[1] for p in writer_copies(root)) == [
        "builds a record", "calls RecordWriter", "calls heatmap_stats", "names the records file"]


def private_uses(*folders: Path) -> list[str]:
    """`file:line: name` for each private name of crackloc (`_x`) that tests or benchmarks import,
    reach as an attribute of an imported crackloc module, or monkeypatch by name."""
    problems = []
    for path in sorted(p for folder in folders for p in folder.rglob("*.py")):
        tree, rel = ast.parse(path.read_text(encoding="utf-8")), f"{path.parent.name}/{path.name}"
        modules: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                problems += [f"{rel}:{node.lineno}: {a.name}" for a in node.names if _private(a.name)]
                modules |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith(PACKAGE)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and _root_name(node.value) in modules:
                problems.append(f"{rel}:{node.lineno}: {node.attr}")
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("setattr", "delattr") \
                    and len(node.args) >= 2 and _root_name(node.args[0]) in modules \
                    and isinstance(node.args[1], ast.Constant) and _private(str(node.args[1].value)):
                problems.append(f"{rel}:{node.lineno}: {node.args[1].value}")
    return problems


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_tests_and_benchmarks_use_only_public_names():
    top = ROOT.parent
    problems = private_uses(top / "tests", top / "benchmarks")
    assert not problems, _report("private crackloc name(s) used by tests or benchmarks", problems)


def test_private_uses_are_found(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "test_x.py").write_text(
        "from crackloc.inference.batch import _maps, run_local\n"
        "from crackloc.inference import outputs\n"
        "import crackloc.tensors\n"
        "def test(monkeypatch):\n"
        "    outputs._sigint_deferred()\n"
        "    crackloc.tensors._flag = 1\n"
        "    monkeypatch.setattr(outputs, '_x', None)\n"
        "    other._y = 2\n")
    assert sorted(p.split(": ", 1)[1] for p in private_uses(tmp_path / "t")) == ["_flag", "_maps",
                                                                                 "_sigint_deferred", "_x"]


# ---- training: calls only point down --------------------------------------------------------------

DOWN = ("crackloc.cli", "crackloc.training.pipeline", "crackloc.training.fit", "crackloc.training.module")


def _call_edges(run) -> set[tuple[str, str, str]]:
    """(caller module, callee module, callee function) of every call between two crackloc modules during `run()`."""
    edges: set[tuple[str, str, str]] = set()

    def profile(frame, event, arg) -> None:
        if event != "call":
            return
        callee = frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back is not None else ""
        if callee != caller and callee.startswith(PACKAGE) and caller.startswith(PACKAGE):
            edges.add((caller, callee, frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return edges


def test_training_calls_only_point_down_cli_pipeline_fit_module(crack_folder, tmp_path):
    """From `crackloc train` to model.pt: cli → pipeline → fit → module, and sources consulted once;
    nothing calls back up that chain (the config no longer bounces between run, fit and module)."""
    from crackloc.cli import main

    edges = _call_edges(lambda: main(["train", "--data", str(crack_folder), "--out", str(tmp_path / "run"),
                                      "--preset", "tiny", "--pretrained", "none", "--epochs", "1",
                                      "--teacher-epochs", "1", "--max-train", "16", "--no-eval"]))
    level = {name: i for i, name in enumerate(DOWN)}

    def rank(module: str) -> int | None:
        return next((level[p] for p in DOWN if module == p or module.startswith(p + ".")), None)

    up = sorted(f"{a} → {b}.{f}" for a, b, f in edges
                if rank(a) is not None and rank(b) is not None and rank(b) < rank(a))
    assert not up, _report("call(s) back up the training chain", up)
    skipped = sorted(f"{a} → {b}.{f}" for a, b, f in edges if a.startswith("crackloc.cli") and rank(b) == 2)
    assert not skipped, _report("the CLI reaching past the pipeline into fit", skipped)
    into_fit = {f for a, b, f in edges if a == DOWN[1] and b == DOWN[2]}
    assert into_fit <= {"start", "fit_model", "broadcast", "barrier", "is_zero", "__init__"}, into_fit
    into_sources = {f for a, b, f in edges if a == DOWN[1] and b == "crackloc.training.sources"}
    assert into_sources <= {"label_plan", "_cam", "_ddt", "_refined"}, into_sources
    assert (tmp_path / "run" / "model.pt").is_file()
