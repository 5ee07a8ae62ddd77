"""The import rules of docs/architecture.md, read from every module's source (no import runs)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"engine": {"server", "training", "export"}, "server": {"training", "export"},
             "training": {"server", "export"}}
#: the one allowed crossing: the server's command line builds a packed model directory's forms
#: once at start-up, before any audio flows (export.cache; docs/model_dir.md)
ALLOWED = {("server/__main__.py", "export")}
TORCHLESS = ("contract", "backends", "pipeline", "beatstage", "hop", "controls", "library", "frontend", "beats",
             "beatspace", "barspace", "tracker", "beatstate", "beatcal", "beatnet", "text", "categories", "manifest",
             "stream", "ring", "audio")


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


def _files(name: str) -> list[Path]:
    """An engine module's file, or every file of an engine subpackage (``engine/library/``)."""
    f, d = ROOT / "engine" / f"{name}.py", ROOT / "engine" / name
    return [f] if f.is_file() else sorted(d.rglob("*.py")) if d.is_dir() else []


def test_engine_onnx_path_needs_no_torch_at_import():
    assert all(_files(m) for m in TORCHLESS), [m for m in TORCHLESS if not _files(m)]
    bad = [str(f.relative_to(ROOT)) for m in TORCHLESS for f in _files(m)
           if "torch" in imports(f, top_level_only=True)]
    assert not bad, f"engine modules importing torch at module level: {bad}"


def test_docs_name_only_files_that_exist():
    """Every repository path that docs/architecture.md names exists (the page cannot rot silently)."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"\b((?:engine|server|training|export|docs|tests)/[\w/.-]+\.(?:py|md))\b", text))
    assert paths and all((ROOT / p).exists() for p in paths), [p for p in paths if not (ROOT / p).exists()]


def test_docs_name_every_engine_module():
    """docs/architecture.md names every module of engine (its list matches the code)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    files = [str(f.relative_to(ROOT)) for f in sorted((ROOT / "engine").rglob("*.py")) if f.name != "__init__.py"]
    assert files and not [f for f in files if f"`{f}`" not in text], [f for f in files if f"`{f}`" not in text]


def engine_deps() -> dict[str, set[str]]:
    """engine's modules (dotted, relative to ``engine``: ``pipeline``, ``library.index``; a package
    by its name, ``library``) -> the engine modules each imports, lazy imports included."""
    files = {}
    for f in (ROOT / "engine").rglob("*.py"):
        parts = f.relative_to(ROOT / "engine").with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    names = set(files)

    def module(dotted: str) -> str | None:  # the module a name lives in ("library.index.StemLibrary" -> "library.index")
        while dotted and dotted not in names:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    deps = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        got = set()
        for n in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(n, ast.ImportFrom) and n.level:
                base = package.split(".")[:len(package.split(".")) - (n.level - 1)] if package else []
                base = ".".join(base)
                heads = [n.module] if n.module else [a.name for a in n.names]
                got |= {module(".".join(x for x in (base, h) if x)) for h in heads}
            elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("engine."):
                got.add(module(n.module[len("engine."):]))
        deps[name] = got - {name, None}
    return deps


def test_no_import_circle_inside_engine():
    """engine's modules import one another without a circle, lazy imports included (the backends
    meet in engine/contract.py, which imports neither of them); the modules of a subpackage
    (engine/library/) count one by one."""
    deps = engine_deps()
    assert {"pipeline", "library", "library.index", "library.builder"} <= set(deps)

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


def test_library_index_does_not_import_its_builder():
    """engine/library/: the index (and its file format) reaches neither the builder nor the
    command line, lazy imports included (docs/architecture.md)."""
    deps = engine_deps()
    for start in ("library.index", "library.store"):
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += deps.get(m, ())
        assert not seen & {"library", "library.builder", "library.command", "library.__main__"}, (start, seen)
