"""The layers of the code import downward only: datasets, then models, then the training
methods (pvd, synthetic: neither imports the other), then the harness, then the entry
scripts and the benchmarks; and no module imports itself back through others.  Read from
the source (every import, those inside functions too), nothing imported."""
import ast

from tests.helpers import ROOT

LAYERS = {"datasets": 0, "models": 1, "pvd": 2, "synthetic": 2, "harness": 3, "scripts": 4, "benchmarks": 5}


def modules():
    """{dotted name: file} of every module of the layered packages."""
    found = {}
    for pkg in LAYERS:
        for f in sorted((ROOT / pkg).glob("*.py")):
            found[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return found


def imports_of(name, path, known):
    """The project's modules that ``name`` imports (importing a package's module runs the
    package's __init__ too)."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    wanted = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            wanted.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            wanted.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    out = set()
    for target in wanted:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
            top = target.split(".")[0]
            if top != name.split(".")[0] and top in known:
                out.add(top)  # the package's __init__
    return out


def graph():
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(g):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_back():
    assert cycles(graph()) == []


def upward(g):
    """Imports of a module of another package on the same layer or above."""
    wrong = []
    for name, targets in g.items():
        for t in sorted(targets):
            a, b = name.split(".")[0], t.split(".")[0]
            if a != b and LAYERS[b] >= LAYERS[a]:
                wrong.append(f"{name} -> {t}")
    return wrong


def test_every_import_goes_down_a_layer_or_stays_in_its_package():
    assert upward(graph()) == []


def test_the_checks_find_a_cycle_and_an_upward_import():
    g = {"models.a": {"models.b"}, "models.b": {"models.a"}, "datasets.x": {"models.a"},
         "pvd.run": {"synthetic.stage"}, "synthetic.stage": {"models.a"}}
    assert cycles(g) == [["models.a", "models.b"]]
    assert upward(g) == ["datasets.x -> models.a", "pvd.run -> synthetic.stage"]


def test_scripts_holds_entry_scripts_only():
    for path in sorted((ROOT / "scripts").glob("*.py")):
        if path.stem != "__init__":
            assert 'if __name__ == "__main__":' in path.read_text(), path.name
    assert not any("scripts" in t for n, ts in graph().items() if n.startswith("benchmarks") for t in ts)
