"""The import rules of docs/architecture.md, read from every module's source (no import runs)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"engine": {"server", "training", "export"}, "server": {"training", "export"},
             "training": {"server", "export"}}
#: the one allowed crossing: the server's command line builds a packed model directory's forms
#: once at start-up, before any audio flows (export.cache; docs/model_dir.md)
ALLOWED = {("server/__main__.py", "export")}
TORCHLESS = ("contract", "backends", "pipeline", "library", "frontend", "beats", "text", "categories", "manifest", "stream",
             "ring", "audio")


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            out |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            out.add(n.module.split(".")[0])
    return out


def test_no_forbidden_imports_between_packages():
    bad = []
    for pkg, banned in FORBIDDEN.items():
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = str(f.relative_to(ROOT))
            hit = {m for m in imports(f) & banned if (rel, m) not in ALLOWED}
            if hit:
                bad.append(f"{rel} imports {', '.join(sorted(hit))}")
    assert not bad, bad


def test_engine_onnx_path_needs_no_torch_at_import():
    bad = [m for m in TORCHLESS if (ROOT / "engine" / f"{m}.py").is_file()
           and "torch" in imports(ROOT / "engine" / f"{m}.py", top_level_only=True)]
    assert not bad, f"engine modules importing torch at module level: {bad}"


def test_docs_name_only_files_that_exist():
    """Every repository path that docs/architecture.md names exists (the page cannot rot silently)."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"\b((?:engine|server|training|export|docs|tests)/[\w/.-]+\.(?:py|md))\b", text))
    assert paths and all((ROOT / p).exists() for p in paths), [p for p in paths if not (ROOT / p).exists()]


def test_no_import_circle_inside_engine():
    """engine's modules import one another without a circle, lazy imports included (the backends
    meet in engine/contract.py, which imports neither of them)."""
    deps = {}
    for f in (ROOT / "engine").glob("*.py"):
        got = set()
        for n in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(n, ast.ImportFrom) and n.level == 1:
                got |= {n.module.split(".")[0]} if n.module else {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").startswith("engine."):
                got.add(n.module.split(".")[1])
        deps[f.stem] = got - {f.stem}

    def circle(path):
        for m in sorted(deps.get(path[-1], ())):
            if m == path[0]:
                return path + [m]
            if m not in path and m > path[0]:
                found = circle(path + [m])
                if found:
                    return found
        return None

    found = [c for c in (circle([m]) for m in sorted(deps)) if c]
    assert not found, [" -> ".join(c) for c in found]
