"""The package layout that docs/architecture.md states: who may import whom, module sizes, one sampler,
old import paths, ``python -m arc_fast.info``."""
import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "arc_fast"

# docs/architecture.md's table: layer -> (its modules, the layers it may import).
LAYERS = {
    "oracle": ({"reference", "_cuda"}, set()),
    "ops": ({"ops"}, {"oracle", "kernels"}),
    "models": ({"models"}, {"ops", "oracle"}),
    "plumbing": ({"sampling", "audio", "guards", "cuda_graphs", "loader", "files", "int8", "cpu", "dtypes", "configs", "limits"}, {"oracle"}),
    "pipeline": ({"pipeline"}, {"plumbing", "oracle"}),
    "loading": ({"loading", "convert"}, {"pipeline", "models", "plumbing", "oracle"}),
}
LAYER_OF = {mod: layer for layer, (mods, _) in LAYERS.items() for mod in mods}
LAYER_OF["kernels"] = "kernels"


def _arc_fast_imports(path: pathlib.Path) -> set[str]:
    """Top-level arc_fast module names imported anywhere in the file (function-level imports included)."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    package = list(rel[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            names = [".".join(base + [node.module])] if node.module else [".".join(base + [a.name]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "arc_fast" and len(parts) > 1:
                out.add(parts[1])
            elif parts[0] == "kernels" and rel[0] != "kernels":
                out.add("kernels")
    return out


def _modules_of(top: str):
    p = PKG / top
    return sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]


def test_kernels_import_nothing_from_arc_fast():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        src = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+arc_fast", src, re.M), f"{path.name} imports arc_fast"


@pytest.mark.parametrize("layer", list(LAYERS))
def test_layers_import_only_what_the_architecture_allows(layer):
    mods, allowed = LAYERS[layer]
    allowed = allowed | {layer}
    for top in sorted(mods):
        for path in _modules_of(top):
            for dep in _arc_fast_imports(path):
                dep_layer = LAYER_OF.get(dep, "applications")
                assert dep_layer in allowed, (f"{path.relative_to(ROOT)} ({layer}) imports arc_fast.{dep} "
                                              f"({dep_layer}); docs/architecture.md allows {sorted(allowed)}")


def test_architecture_doc_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for entry in sorted(os.listdir(PKG)):
        if entry.startswith("__pycache__") or entry in ("assets", "py.typed"):  # py.typed: the PEP 561 marker
            continue
        if not entry.endswith(".py") and not (PKG / entry).is_dir():
            continue  # data beside the modules (py.typed), not a module to place
        name = entry[:-3] if entry.endswith(".py") else entry
        assert f"`{name}" in doc, f"docs/architecture.md does not place arc_fast/{entry}"


def test_no_module_over_600_lines():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        n = len(path.read_text().splitlines())
        assert n <= 600, f"arc_fast/{rel}: {n} lines (split it by concern)"
    # pipeline.py holds the Pipeline class (~370 lines) plus dtype names, Timings and the old-path re-exports.
    assert len((PKG / "pipeline.py").read_text().splitlines()) <= 470


def test_the_ping_pong_update_is_written_once():
    pattern = re.compile(r"\(1 - t_next\)\S* \* x0_hat \+ t_next\S* \* eps")
    hits = [f"{p.relative_to(ROOT)}:{i + 1}" for d in ("arc_fast", "bench", "kernels", "scripts")
            for p in sorted((ROOT / d).rglob("*.py")) for i, line in enumerate(p.read_text().splitlines())
            if pattern.search(line)]
    assert hits == ["arc_fast/sampling.py:" + hits[0].split(":")[1]] and len(hits) == 1, hits


def test_old_import_paths_resolve_to_the_new_homes():
    import importlib

    import arc_fast.loader as loader
    import arc_fast.pipeline as pipeline
    for module, names in pipeline._MOVED.items():
        home = importlib.import_module(module)
        for name in names:
            assert getattr(pipeline, name) is getattr(home, name), name
    import arc_fast.int8 as int8
    for name in loader._INT8_NAMES:
        assert getattr(loader, name) is getattr(int8, name)
    with pytest.raises(AttributeError):
        pipeline.no_such_name


def test_python_m_arc_fast_info_prints_the_report():
    out = subprocess.run([sys.executable, "-m", "arc_fast.info"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("arc-fast ") and "SDPA (torch)" in out.stdout
