"""The README's examples run: every ``arc-fast ...`` / ``python -m arc_fast ...`` command of its bash blocks and
every Python block, against the bundled model, in a temporary folder.

Which examples run (the rule; everything else in the README's code blocks runs):
- an example that needs a user-supplied model or file is skipped, with the reason: it names a ``/path/to/...``
  placeholder (Python: outside comments), calls stable-audio-tools' ``get_pretrained_model`` (a download), or
  reads an input path that exists neither in the repository nor among the files earlier examples wrote
  (``--config arc.json``, ``--base runs/pretrain/model``);
- other lines of bash blocks (``bash scripts/...``, ``pip install ...``) are setup, not examples: the test
  suite itself is what ``bash scripts/test.sh`` runs.

Commands run from a temporary folder that links every top-level entry of the repository (so relative inputs
such as ``docs/...`` resolve as from the repository root, where the README's commands are typed) and receives
the outputs. Each runs with the README's own settings (the bundled model generates 1.49 s in well under a
second of compute per clip), so no short-settings override exists.
"""
from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
import tokenize

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
OUTPUT_FLAGS = {"-o", "--output", "--out"}
INPUT_SUFFIXES = (".json", ".wav", ".flac", ".ogg", ".ckpt", ".pt", ".safetensors", ".txt")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of the markdown text, in order."""
    return [(m.group(1).strip().lower(), m.group(2)) for m in
            re.finditer(r"^```([^\n`]*)\n(.*?)^```", text, flags=re.M | re.S)]


def cli_commands(body: str) -> list[str]:
    """The ``arc-fast`` / ``python -m arc_fast`` commands of a bash block: comments dropped, ``&&`` chains split,
    ``.venv/bin/arc-fast`` read as ``arc-fast``; one string per command, as typed (quotes kept)."""
    out = []
    for line in body.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        # Re-split on the && separators of the original text (shlex keeps them as words).
        chain, cur = [], []
        for w in words:
            if w == "&&":
                chain.append(cur)
                cur = []
            else:
                cur.append(w)
        chain.append(cur)
        for words in chain:
            env = []
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                env.append(words.pop(0))
            if words and words[0] in ("arc-fast", ".venv/bin/arc-fast"):
                out.append(shlex.join(env + ["arc-fast", *words[1:]]))
            elif words[:3] == ["python", "-m", "arc_fast"]:
                out.append(shlex.join(env + words))
    return out


def python_code_only(body: str) -> str:
    """The block without its comments (a ``/path/to`` in a comment is an aside, not an input)."""
    toks = tokenize.generate_tokens(io.StringIO(body).readline)
    return tokenize.untokenize((t.type, t.string) for t in toks if t.type != tokenize.COMMENT)


def examples() -> list:
    with open(README, encoding="utf-8") as f:
        blocks = code_blocks(f.read())
    cases = []
    for lang, body in blocks:
        if lang in ("bash", "sh", "shell", "console"):
            cases += [pytest.param("cli", cmd, id=cmd[:60]) for cmd in cli_commands(body)]
        elif lang == "python":
            cases.append(pytest.param("python", body, id="python:" + body.strip().splitlines()[0][:50]))
    return cases


EXAMPLES = examples()


def user_supplied(kind: str, text: str, cwd: str) -> str | None:
    """Why the example needs something the user supplies (then it is skipped), or None."""
    code = python_code_only(text) if kind == "python" else text
    if "/path/to" in code:
        return "names a /path/to placeholder (a user-supplied model or file)"
    if "get_pretrained_model" in code:
        return "downloads a stable-audio-tools model (get_pretrained_model)"
    if kind == "cli":
        words = shlex.split(text)
        for prev, w in zip(words, words[1:]):
            if prev in OUTPUT_FLAGS or w.startswith("-"):
                continue
            looks_like_path = "/" in w or w.lower().endswith(INPUT_SUFFIXES)
            if looks_like_path and not os.path.exists(os.path.join(cwd, w)):
                return f"reads {w!r}, a user-supplied input (not in the repository, not written by an example)"
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for all examples (later ones may read what earlier ones wrote), linking the repository's
    top-level entries so that relative inputs resolve as from the repository root."""
    d = tmp_path_factory.mktemp("readme")
    for name in os.listdir(REPO):
        if name not in (".git", ".venv", ".sat"):
            os.symlink(os.path.join(REPO, name), d / name)
    return str(d)


def _env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the examples run the CPU eager path, as on a user's first try
    env["OMP_NUM_THREADS"] = "1"
    return env


def _argv(cmd: str) -> tuple[list[str], dict]:
    words = shlex.split(cmd)
    env = _env()
    while re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    if words[0] == "arc-fast":
        # The console script the install put beside this interpreter; `python -m arc_fast` where there is none.
        script = os.path.join(os.path.dirname(sys.executable), "arc-fast")
        return ([script] if os.path.exists(script) else [sys.executable, "-m", "arc_fast"]) + words[1:], env
    return [sys.executable, *words[1:]], env


def _outputs(cmd: str) -> list[str]:
    words = shlex.split(cmd)
    return [w for prev, w in zip(words, words[1:]) if prev in OUTPUT_FLAGS]


def test_the_rule_leaves_examples_to_run():
    """The skip rule cannot swallow the README: its first command and the bundled-model examples run."""
    runnable = [p.values[1] for p in EXAMPLES if p.values[0] == "cli" and "/path/to" not in p.values[1]]
    first = ["arc-fast", "generate", "a low sine tone at 220 Hz", "-o", "out.wav"]
    assert first in [shlex.split(c) for c in runnable], runnable
    assert any("hi-hat" in c for c in runnable) and any(c.endswith(" info") for c in runnable), runnable
    assert any(p.values[0] == "python" and "/path/to" not in python_code_only(p.values[1]) for p in EXAMPLES)


def test_cli_command_extraction():
    body = ('bash scripts/setup.sh && .venv/bin/arc-fast generate "a b" -o x.wav\n'
            'pip install -e .   # not an example\n'
            'X_Y=1 arc-fast info   # a comment\n'
            'python -m arc_fast info\n')
    assert cli_commands(body) == ["arc-fast generate 'a b' -o x.wav", "X_Y=1 arc-fast info", "python -m arc_fast info"]


@pytest.mark.parametrize("kind, text", EXAMPLES)
def test_readme_example_runs(kind, text, workdir):
    why = user_supplied(kind, text, workdir)
    if why:
        pytest.skip(why)
    if kind == "cli":
        argv, env = _argv(text)
        r = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{text}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
        for out in _outputs(text):
            path = os.path.join(workdir, out)
            assert os.path.exists(path), f"{text}: wrote no {out}"
            if os.path.isfile(path) and path.endswith((".wav", ".flac", ".ogg")):
                import soundfile as sf
                info = sf.info(path)
                assert info.frames > 0 and info.channels == 2, (text, info)
    else:
        r = subprocess.run([sys.executable, "-c", text], cwd=workdir, env=_env(), capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, f"python block failed:\n{text}\nstderr: {r.stderr[-3000:]}"
