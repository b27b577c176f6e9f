"""Package layering, read from the source with `ast` (nothing is imported).

Every `import crackloc...`, `from crackloc... import ...` and relative import counts, lazy
imports inside functions included. The checks: no import cycles, layers only point down
(training and inference never import each other), and no branching on method names outside
the registry and the experiment method table.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = "crackloc"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Layer of a module, by its path inside the package: top-level files, then first folders.
TOP_FILES: dict[str, tuple[str, int]] = {
    "__init__.py": ("core", 0), "errors.py": ("core", 0), "io.py": ("core", 0),
    "config.py": ("core", 0), "tensors.py": ("core", 0), "__main__.py": ("cli", 6),
}
FOLDERS: dict[str, tuple[str, int]] = {
    "data": ("data", 1), "models": ("models", 2), "training": ("training", 3),
    "inference": ("inference", 3), "evaluation": ("evaluation", 4),
    "experiments": ("experiments", 5), "viewer": ("viewer", 5), "cli": ("cli", 6),
}
SIDEWAYS = {frozenset({"training", "inference"})}  # same rank, but must not import each other

METHOD_NAMES = frozenset({"crackloc", "resnet18_cam", "cam_vgg16", "wsol_crack", "psol", "ts_cam",
                          "resnet18", "lite0"})
NAME_TABLES = ("models/registry.py", "experiments/methods.py")  # the only places that may branch
COMPARE_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


@dataclass
class Package:
    """A package's modules (dotted name → path relative to the package root) and import edges."""

    root: Path
    paths: dict[str, Path] = field(default_factory=dict, repr=False)
    edges: dict[str, set[str]] = field(default_factory=dict, repr=False)


def _module_name(rel: Path, package: str) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _import_targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    """Dotted names an import statement may refer to (most specific first per imported name)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_pkg else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    return [f"{base}.{alias.name}" if alias.name != "*" else base for alias in node.names] + [base]


def _resolve(name: str, modules: set[str], package: str) -> str | None:
    """The module a dotted name lands in: itself, else its longest existing parent (in package)."""
    if name != package and not name.startswith(package + "."):
        return None
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _edges_of(tree: ast.AST, module: str, is_pkg: bool, modules: set[str], package: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):  # walks function bodies too: lazy imports are dependencies
        if isinstance(node, ast.Import):
            found |= {t for a in node.names if (t := _resolve(a.name, modules, package))}
        elif isinstance(node, ast.ImportFrom):
            targets = _import_targets(node, module, is_pkg)
            base = targets[-1]
            for name in targets[:-1]:  # `from a import b` → a.b if it is a module, else a
                target = name if name in modules else _resolve(base, modules, package)
                if target:
                    found.add(target)
    found.discard(module)
    return found


def scan_package(root: Path, package: str = PACKAGE) -> Package:
    """Parse every module under `root` (the package folder) and build its import graph."""
    pkg = Package(root=root)
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        pkg.paths[_module_name(path.relative_to(root), package)] = path.relative_to(root)
    modules = set(pkg.paths)
    for name, rel in pkg.paths.items():
        tree = ast.parse((root / rel).read_text(encoding="utf-8"), filename=str(rel))
        pkg.edges[name] = _edges_of(tree, name, rel.name == "__init__.py", modules, package)
    return pkg


def _shortest_cycle(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str] | None:
    """Shortest path start → … → start inside one strongly connected component (BFS)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in members:
                continue
            if nxt == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(parent[chain[-1]])
                return [*reversed(chain), start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return None


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph), None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while (top := stack.pop()) != node:
                        comp.add(top)
                        on_stack.discard(top)
                    on_stack.discard(node)
                    if comp:
                        result.append(comp | {node})
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return result


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Import cycles as chains `a -> b -> a`: the shortest one through each module on a cycle."""
    chains: set[str] = set()
    for comp in _components(graph):
        for start in sorted(comp):
            cycle = _shortest_cycle(graph, start, comp)
            if cycle:
                i = cycle.index(min(cycle[:-1]))  # rotate so the same cycle reads the same
                chains.add(" -> ".join(cycle[i:-1] + cycle[:i] + [cycle[i]]))
    return sorted(chains)


def layer_of(rel: Path) -> tuple[str, int] | None:
    """(layer name, rank) of a module from its path inside the package; None if not in the table."""
    if len(rel.parts) == 1:
        return TOP_FILES.get(rel.name)
    return FOLDERS.get(rel.parts[0])


def layer_violations(pkg: Package) -> list[str]:
    """Modules outside the layer table, and imports that point up or sideways."""
    problems = [f"{name} ({rel}) is in no layer: add it to the layer table deliberately"
                for name, rel in sorted(pkg.paths.items()) if layer_of(rel) is None]
    for importer, targets in sorted(pkg.edges.items()):
        src = layer_of(pkg.paths[importer])
        for imported in sorted(targets):
            dst = layer_of(pkg.paths[imported])
            if src is None or dst is None:
                continue
            if dst[1] > src[1] or frozenset({src[0], dst[0]}) in SIDEWAYS:
                problems.append(f"{importer} -> {imported} ({src[0]} {src[1]} -> {dst[0]} {dst[1]})")
    return problems


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


# ---- the checks on the real package ----------------------------------------------------------


@pytest.fixture(scope="module")
def package() -> Package:
    assert (ROOT / "__init__.py").is_file(), ROOT
    pkg = scan_package(ROOT)
    assert len(pkg.paths) > 20 and sum(map(len, pkg.edges.values())) > 20  # not vacuous
    return pkg


def test_no_import_cycles(package):
    cycles = find_cycles(package.edges)
    assert not cycles, _report("import cycle(s) in crackloc/", cycles)


def test_layers_only_point_down(package):
    problems = layer_violations(package)
    assert not problems, _report("layering violation(s)", problems)


def test_no_branches_on_method_names():
    problems = method_name_branches(ROOT)
    assert not problems, _report(
        "branch(es) on method names outside models/registry.py and experiments/methods.py", problems)


# ---- the helpers, on a tiny fake package -----------------------------------------------------


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


def test_graph_resolves_absolute_relative_and_lazy_imports(tmp_path):
    pkg = scan_package(_write(tmp_path, CLEAN))
    assert pkg.edges["crackloc.data"] == {"crackloc.data.folders"}  # `scan` is not a module
    assert pkg.edges["crackloc.models.net"] == {"crackloc.data.folders", "crackloc.data"}
    assert pkg.edges["crackloc.training.fit"] == {"crackloc.models.net"}  # inside a function
    assert pkg.edges["crackloc.inference.predict"] == {"crackloc.inference.helpers"}
    assert pkg.paths["crackloc.data"] == Path("data/__init__.py")


def test_clean_fake_package_passes(tmp_path):
    root = _write(tmp_path, CLEAN)
    pkg = scan_package(root)
    assert find_cycles(pkg.edges) == []
    assert layer_violations(pkg) == []
    assert method_name_branches(root) == []


def test_two_module_cycle_is_found(tmp_path):
    pkg = scan_package(_write(tmp_path, {
        **CLEAN,
        "data/split.py": "def split():\n    from crackloc.data.folders import scan\n",
        "data/folders.py": "from crackloc.data import split\n",
    }))
    assert find_cycles(pkg.edges) == [  # split's import is lazy, inside a function
        "crackloc.data.folders -> crackloc.data.split -> crackloc.data.folders",
    ]


def test_cycle_through_a_package_init_is_found(tmp_path):
    pkg = scan_package(_write(tmp_path, {
        **CLEAN,
        "data/folders.py": "from . import CONSTANT\n",  # crackloc.data, which imports folders
    }))
    assert find_cycles(pkg.edges) == ["crackloc.data -> crackloc.data.folders -> crackloc.data"]


def test_upward_sideways_and_unplaced_modules_are_found(tmp_path):
    pkg = scan_package(_write(tmp_path, {
        **CLEAN,
        "data/folders.py": "def scan():\n    from ..models.net import Net\n",
        "inference/predict.py": "from crackloc.training import fit\n",
        "stray.py": "import crackloc.errors\n",
    }))
    assert layer_violations(pkg) == [
        "crackloc.stray (stray.py) is in no layer: add it to the layer table deliberately",
        "crackloc.data.folders -> crackloc.models.net (data 1 -> models 2)",
        "crackloc.inference.predict -> crackloc.training.fit (inference 3 -> training 3)",
    ]


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
