#!/usr/bin/env bash
# Install the public stable-audio-tools package (pure Python) plus the few modules its model code imports,
# into .sat/ (git-ignored), for tests/test_interop_sat.py. The project venv is left untouched: everything
# goes through `pip install --target --no-deps`, so pip can never pull another torch.
#
#   .sat/site          shared deps: huggingface_hub + the part of its deps its import needs, alias-free-torch,
#                      einops-exts, and any base package (safetensors, einops, ...) missing from the venv
#   .sat/sat-0.0.19    stable_audio_tools 0.0.19 (SPEC.md section 7 was measured on it): DiT + Oobleck
#   .sat/sat-0.0.20    stable_audio_tools 0.0.20 (newest; declares Requires-Python <3.11, so installed
#                      with --ignore-requires-python), plus scipy, PyWavelets, torchsde (+ trampoline): its
#                      autoencoders and inference.generation import them at module level (tests/test_patch_sat.py
#                      runs its generate_diffusion_cond); without them only its DiT tests run
#   tests/sat_stubs    torchaudio / k_diffusion / pytorch_lightning import stubs (in the repo, not here)
#
# Idempotent (a stamp file records what was installed and for which interpreter). Prints one line and
# exits 0 even on failure: the interop tests then skip and say why. PYTHON=... overrides the interpreter.
# Needs PyPI, never the Hugging Face hub.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAT="$ROOT/.sat"
PY="${PYTHON:-python}"
STUBS="$ROOT/tests/sat_stubs"
SAT_VERSIONS="0.0.19 0.0.20"
# Only what `import stable_audio_tools.models.{dit,autoencoders}` executes: huggingface_hub 2.x imports
# httpx2 (-> idna) and yaml at module load; httpcore2/anyio/hf-xet/click are only needed for real downloads.
DEPS="huggingface_hub==2.4.0 httpx2==2.16.2 idna pyyaml alias-free-torch==0.0.6 einops-exts==0.0.4"
# 0.0.20's generation / autoencoder imports (installed beside it, so 0.0.19 runs without them as before).
DEPS20="scipy PyWavelets torchsde==0.2.6 trampoline==0.1.2"
# Base packages (import name = pip name) the code imports that the project venv normally has; installed
# into .sat/site only when absent.
BASE="safetensors einops numpy packaging filelock fsspec tqdm typing_extensions"

say() { echo "install_sat: $*"; }
fail() {
    local log=""
    [ -s "$SAT/install.log" ] && log="see .sat/install.log; "
    say "FAILED: $* (${log}the interop tests will skip)"
    exit 0
}

SECONDS=0
probe='
import importlib.util, sys, torch
missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
print(f"py{sys.version_info[0]}.{sys.version_info[1]} torch{torch.__version__}|" + " ".join(missing))
'
# shellcheck disable=SC2086
if ! probed=$("$PY" -c "$probe" $BASE 2>/dev/null); then
    say "FAILED: '$PY' cannot import torch (activate the project venv or set PYTHON; the interop tests will skip)"
    exit 0
fi
pyver="${probed%%|*}"
missing="${probed#*|}"
stamp="sat=$SAT_VERSIONS deps=$DEPS deps20=$DEPS20 $pyver stubs=$(cat "$STUBS"/*/*.py 2>/dev/null | cksum | cut -d' ' -f1)"

# One interpreter checks both versions (importing torch + torch._dynamo dominates the run time): each
# version is imported from its own folder, then purged from sys.modules before the next. Prints one
# "<version> ok" or "<version> FAILED: <why>" line per version.
CHECK='
import contextlib, importlib, io, sys
sat, stubs = sys.argv[1], sys.argv[2]
sys.path[:0] = [sat + "/site", stubs]
for version, mods in (("0.0.19", ("dit", "autoencoders")), ("0.0.20", ("dit",))):
    sys.path.insert(0, f"{sat}/sat-{version}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            for m in mods:
                importlib.import_module("stable_audio_tools.models." + m)
        print(version, "ok")
    except Exception as e:
        print(version, f"FAILED: import stable_audio_tools.models.{m}: {type(e).__name__}: {e}")
    sys.path.remove(f"{sat}/sat-{version}")
    for name in [n for n in sys.modules if n.split(".")[0] == "stable_audio_tools"]:
        del sys.modules[name]
'

installed=1
for d in site $(printf 'sat-%s ' $SAT_VERSIONS); do [ -d "$SAT/$d" ] || installed=0; done
if [ "$installed" = 1 ] && [ -f "$SAT/stamp" ] && [ "$(cat "$SAT/stamp")" = "$stamp" ]; then
    say "already installed in .sat ($pyver), nothing to do"
    exit 0
fi

mkdir -p "$SAT"
rm -rf "$SAT/site" "$SAT"/sat-* "$SAT/stamp"
: >"$SAT/install.log"

pipi() { "$PY" -m pip install --no-deps --no-compile --disable-pip-version-check -q "$@" >>"$SAT/install.log" 2>&1; }

# shellcheck disable=SC2086
pipi --target "$SAT/site" $DEPS $missing || fail "pip could not install $DEPS${missing:+ $missing}"
# 0.0.19 is required (the tests skip without it); 0.0.20 only adds its own DiT comparisons.
pipi --target "$SAT/sat-0.0.19" "stable-audio-tools==0.0.19" || fail "pip could not install stable-audio-tools==0.0.19"
note=""
pipi --ignore-requires-python --target "$SAT/sat-0.0.20" "stable-audio-tools==0.0.20" \
    || { note="; 0.0.20 not installed (pip failed), its tests will skip"; rm -rf "$SAT/sat-0.0.20"; }
if [ -d "$SAT/sat-0.0.20" ]; then
    # shellcheck disable=SC2086
    pipi --target "$SAT/sat-0.0.20" $DEPS20 \
        || note="; $DEPS20 not installed (pip failed): 0.0.20's generation tests will skip"
fi

report=$(HF_HUB_OFFLINE=1 "$PY" -c "$CHECK" "$SAT" "$STUBS" 2>>"$SAT/install.log")
echo "$report" >>"$SAT/install.log"
line19=$(echo "$report" | grep '^0.0.19 ')
[ "$line19" = "0.0.19 ok" ] || fail "stable-audio-tools ${line19:-0.0.19: the import check did not run}"
if [ -d "$SAT/sat-0.0.20" ]; then
    line20=$(echo "$report" | grep '^0.0.20 ')
    [ "$line20" = "0.0.20 ok" ] || note="; stable-audio-tools ${line20:-0.0.20: not checked} (its tests will skip)"
fi

echo "$stamp" >"$SAT/stamp"
say "OK: stable-audio-tools $SAT_VERSIONS in .sat ($pyver${missing:+, also: $missing}) in ${SECONDS}s$note"
exit 0
