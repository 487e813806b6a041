"""What users of typed, GPU-flavoured installs expect: ``py.typed`` shipped, a CuPy extra per CUDA major version,
and every ``ARC_FAST_*`` environment variable the code reads documented in the README's one table."""
from __future__ import annotations

import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A read of an environment variable: os.environ.get("X"...), os.environ["X"], os.getenv("X"...), or $X / ${X} in
# shell. Assignments (ARC_FAST_X=1 cmd, monkeypatch.setenv) and C include guards are not reads.
PY_READ = re.compile(r"""(?:environ\.get|getenv|environ\[|environ\.setdefault)\(?\s*["'](ARC_FAST_[A-Z0-9_]+)["']""")
SH_READ = re.compile(r"\$\{?(ARC_FAST_[A-Z0-9_]+)")
SKIP_DIRS = {".git", ".venv", ".sat", "build", "dist", "__pycache__", "node_modules"}


def variables_read() -> dict[str, list[str]]:
    """{variable: files reading it} over the repository's Python and shell sources."""
    found: dict[str, list[str]] = {}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            pattern = PY_READ if name.endswith(".py") else SH_READ if name.endswith(".sh") else None
            if pattern is None:
                continue
            path = os.path.join(root, name)
            if os.path.abspath(path) == os.path.abspath(__file__):  # its pattern examples are not reads
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                for var in pattern.findall(f.read()):
                    found.setdefault(var, []).append(os.path.relpath(path, REPO))
    return found


def readme_table_variables() -> list[str]:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Environment variables", 1)
    assert len(section) == 2, "README.md has no '## Environment variables' section"
    body = section[1].split("\n## ", 1)[0]
    return re.findall(r"^\|\s*`(ARC_FAST_[A-Z0-9_]+)`\s*\|", body, flags=re.M)


def test_readme_documents_exactly_the_environment_variables_read():
    read = variables_read()
    listed = readme_table_variables()
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    missing = {v: read[v] for v in sorted(set(read) - set(listed))}
    stale = sorted(set(listed) - set(read))
    assert not missing and not stale, f"undocumented (read in): {missing}; documented but never read: {stale}"
    assert "ARC_FAST_T5_PATH" in read and "ARC_FAST_BACKEND" in read  # the scan itself finds reads


def test_env_scan_patterns():
    assert PY_READ.findall('os.environ.get("ARC_FAST_A", "1") os.getenv(\'ARC_FAST_B\') os.environ["ARC_FAST_C"]') \
        == ["ARC_FAST_A", "ARC_FAST_B", "ARC_FAST_C"]
    assert PY_READ.findall('monkeypatch.setenv("ARC_FAST_X", "1")  # ARC_FAST_Y=0') == []
    assert SH_READ.findall('echo "${ARC_FAST_A:-0}" $ARC_FAST_B; ARC_FAST_C=1 cmd') == ["ARC_FAST_A", "ARC_FAST_B"]


def test_py_typed_is_shipped():
    import arc_fast
    pkg = os.path.dirname(arc_fast.__file__)
    assert os.path.isfile(os.path.join(pkg, "py.typed"))
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        setup = f.read()
    data = re.search(r'package_data=\{"arc_fast": \[([^\]]*)\]', setup)
    assert data and '"py.typed"' in data.group(1), "setup.py's package_data must ship arc_fast/py.typed"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is in the standard library from Python 3.11")
def test_cupy_extra_per_cuda_major():
    import tomllib
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert "cupy-cuda13x" in extras["gpu"] and "cupy-cuda12x" in extras["gpu-cu12"]
    rest = lambda deps: sorted(d for d in deps if not d.startswith("cupy"))  # noqa: E731
    assert rest(extras["gpu"]) == rest(extras["gpu-cu12"])
