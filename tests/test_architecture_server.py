"""The server's side of docs/architecture.md: ``server.app.Server`` is assembled from parts that
never import it (read from the sources; no import runs)."""
import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[1] / "server"
PARTS = {"messages", "control"}  # mixed into server.app.Server


def server_imports(name: str) -> set[str]:
    """The ``server`` modules ``server/<name>.py`` imports, lazy imports included."""
    f = SERVER / f"{name}.py"
    out = set()
    for n in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(n, ast.ImportFrom) and n.level == 1:
            out |= {n.module.split(".")[0]} if n.module else {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module or "").startswith("server."):
            out.add(n.module.split(".")[1])
    return out - {name}


def test_server_app_is_assembled_from_parts_that_do_not_import_it():
    assert PARTS <= server_imports("app")
    seen, todo = set(), sorted(PARTS)
    while todo:
        m = todo.pop()
        if m not in seen and (SERVER / f"{m}.py").is_file():
            seen.add(m)
            todo.extend(server_imports(m))
    assert "app" not in seen, f"a part of server.app imports it back: {sorted(seen)}"


def test_server_app_keeps_its_public_names():
    """What the command line, the bridges, the stress tool and the tests import from server.app."""
    import server.app as app

    for name in ("Server", "ConfigError", "is_local_address", "load_curve_server", "library_loader"):
        assert hasattr(app, name), name
    assert {"Control", "Messages"} <= {c.__name__ for c in app.Server.__mro__}
