"""The package layers: utils < models < datasets < training | propagation < main.py, experiments.

Every module's imports are parsed (ast, not executed); an import from a higher layer, between
training and propagation, or an import cycle among the project's modules fails the test. Local
imports (inside functions) count too."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER = {"utils": 0, "models": 1, "datasets": 2, "training": 3, "propagation": 3, "main": 4, "experiments": 4}
ALLOWED_SIDEWAYS = {("experiments", "main")}   # the experiments run main.py's stages in-process
PACKAGES = ("utils", "models", "datasets", "training", "propagation", "experiments")


def project_modules():
    """{module name: path} of main.py and every module of the packages."""
    mods = {"main": os.path.join(ROOT, "main.py")}
    for pkg in PACKAGES:
        for folder, subdirs, files in os.walk(os.path.join(ROOT, pkg)):   # subpackages too
            subdirs[:] = sorted(d for d in subdirs if os.path.isfile(os.path.join(folder, d, "__init__.py")))
            prefix = os.path.relpath(folder, ROOT).replace(os.sep, ".")
            for name in sorted(files):
                if name.endswith(".py"):
                    mod = prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"
                    mods[mod] = os.path.join(folder, name)
    return mods


def imports_of(path, mods):
    """Project modules imported by the file at `path` (absolute imports)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n in mods:
                found.add(n)
    return found


def graph():
    mods = project_modules()
    return {m: imports_of(p, mods) - {m} for m, p in mods.items()}


def layer(mod):
    return LAYER[mod.split(".")[0]]


def test_no_import_from_a_higher_layer_or_across_training_and_propagation():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            top, dtop = mod.split(".")[0], dep.split(".")[0]
            if top == dtop:
                continue
            if (top, dtop) in ALLOWED_SIDEWAYS:
                continue
            if layer(dep) >= layer(mod):
                bad.append(f"{mod} imports {dep}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    g = graph()
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(g[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_reference_twins_are_for_tests_only():
    """The slow twins in `<package>/_reference.py` are test and bench code: no module of the
    package imports one (a _reference module may build on another)."""
    bad = [f"{mod} imports {dep}" for mod, deps in graph().items() if not mod.endswith("._reference")
           for dep in deps if dep.endswith("._reference")]
    assert not bad, "package code using a test-only reference:\n" + "\n".join(sorted(bad))


def test_the_checker_sees_a_violation(tmp_path):
    """The parser finds imports in every form (top level, inside functions, `from x import y`)."""
    mods = {"training.a": "", "propagation.b": "", "propagation": ""}
    src = tmp_path / "m.py"
    src.write_text("import os\ndef f():\n    from propagation.b import g\n    import training.a\n")
    assert imports_of(str(src), mods) == {"propagation.b", "training.a"}
