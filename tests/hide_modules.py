"""``python tests/hide_modules.py MODULES MOD [ARGS...]``: run ``python -m MOD ARGS`` as if the
comma-separated ``MODULES`` were not installed (``import`` fails, ``importlib.util.find_spec``
finds nothing), e.g. onnxruntime, to test what the base install does without an extra."""
import runpy
import sys


class _Hide:
    def __init__(self, hidden, finders):
        self.hidden, self.finders = hidden, finders

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.hidden:
            return None
        for f in self.finders:
            spec = f.find_spec(name, path, target) if hasattr(f, "find_spec") else None
            if spec is not None:
                return spec
        return None


if __name__ == "__main__":
    hidden = set(sys.argv[1].split(","))
    for name in list(sys.modules):
        if name.split(".")[0] in hidden:
            del sys.modules[name]
    sys.meta_path[:] = [_Hide(hidden, list(sys.meta_path))]
    mod = sys.argv[2]
    sys.argv = [mod] + sys.argv[3:]
    if mod == "-c":
        exec(compile(sys.argv[1], "<hide_modules>", "exec"), {"__name__": "__main__"})
    else:
        runpy.run_module(mod, run_name="__main__", alter_sys=True)
