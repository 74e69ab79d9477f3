"""The package's layers import only downwards, no modules import each other, and the package never
imports the research code outside it (docs/design.md §1).

Read from the source (every ``import`` statement, including the deferred ones inside functions),
so a cycle cannot hide behind a local import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dreamperp"
# The research code's home, outside the wheel (docs/design.md §10): it may import dreamperp, never the reverse.
RESEARCH = "research"

# Lowest first. A module may import its own layer and the layers before it, never a later one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("shared helpers", ("dreamperp", "dreamperp.errors", "dreamperp.device", "dreamperp.files", "dreamperp.images", "dreamperp.signals", "dreamperp.shipped")),
    ("config", ("dreamperp.config",)),
    ("step plan", ("dreamperp.plan",)),
    ("cameras and datasets", ("dreamperp.cameras", "dreamperp.multiview")),
    ("toy models", ("dreamperp.toy",)),
    ("diffusion weights", ("dreamperp.models",)),
    ("scene", ("dreamperp.scene",)),
    ("run folders", ("dreamperp.runs",)),
    ("guidance", ("dreamperp.guidance",)),
    ("training", ("dreamperp.train",)),
    ("export", ("dreamperp.export",)),
    ("commands", (
        "dreamperp.commands", "dreamperp.sample", "dreamperp.doctor", "dreamperp.batch", "dreamperp.viewer", "dreamperp.cli", "dreamperp.__main__",
    )),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


def imports_of(path: Path, module: str) -> set[str]:
    """dreamperp modules that ``path`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dreamperp")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "dreamperp":
                continue
            found.add(base)
            for alias in node.names:
                if (PACKAGE.parent / (base + "." + alias.name).replace(".", "/")).with_suffix(".py").exists():
                    found.add(f"{base}.{alias.name}")
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in imports_of(p, m) if i in modules and i != "dreamperp"} for m, p in modules.items()}


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in graph() if layer_of(m) < 0)
    assert not missing, f"place these modules in LAYERS: {missing}"


def test_imports_point_downwards() -> None:
    wrong = []
    for module, deps in sorted(graph().items()):
        for dep in sorted(deps):
            if layer_of(dep) > layer_of(module):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_the_checker_sees_deferred_imports(tmp_path: Path) -> None:
    """The reader finds an import inside a function, so a cycle cannot hide behind one."""
    src = tmp_path / "dreamperp" / "scene" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("def f():\n    from dreamperp.train.trainer import Trainer\n")
    assert imports_of(src, "dreamperp.scene.x") == {"dreamperp.train.trainer"}
    assert layer_of("dreamperp.train.trainer") > layer_of("dreamperp.scene.x")


#: What the renderer, the Scene and the exporters may ask of a field (scene/base_field.py, docs/design.md §1.1).
FIELD_CONTRACT = {"get_density", "get_outputs", "get_normals", "density", "albedo", "normal", "grid_parameters", "parameters"}


def test_field_is_used_only_through_its_contract() -> None:
    """Outside the field's own module, ``<...>.field.<name>`` only names contract methods: a renderer
    that reached into a field's internals (encode, density_from_features) would fail here."""
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("field.py", "base_field.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value
            is_field = (isinstance(owner, ast.Name) and owner.id == "field") or (isinstance(owner, ast.Attribute) and owner.attr == "field")
            if is_field and node.attr not in FIELD_CONTRACT:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: field.{node.attr}")
    assert not wrong, "\n".join(wrong)


def research_imports(path: Path) -> list[str]:
    """``line: module`` for every import of the research package in ``path``, deferred ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        found += [f"{node.lineno}: {name}" for name in names if name.split(".")[0] == RESEARCH]
    return found


def test_the_package_never_imports_the_research_code() -> None:
    """The product runs from the wheel, which does not hold ``research/`` (the toy world, its
    classifier, the Janus metrics): the shipped toy models are found by dreamperp/toy/assets.py alone."""
    wrong = [f"{path.relative_to(PACKAGE.parent)}:{hit}" for path in sorted(PACKAGE.rglob("*.py")) for hit in research_imports(path)]
    assert not wrong, "\n".join(wrong)


def test_the_research_check_sees_every_import_form(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text("import research.toy.world\ndef f():\n    from research.toy import janus\nfrom dreamperp.toy import assets\n")
    assert research_imports(src) == ["1: research.toy.world", "3: research.toy"]


MAX_MODULE_LINES = 450  # issue 35: a module that grows past this holds more than one concept; split it


def test_no_module_is_over_the_line_limit() -> None:
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(sizes) > 50 and max(sizes.values()) > 100  # the walk found the package
    over = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {over}"
