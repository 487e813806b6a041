"""The benchmark harness (bench/): argument parsing, the no-CUDA error, a --quick CPU smoke run of every suite,
peers that are missing giving skipped rows with a reason, the oracle check, and the output helpers."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import common, kernels, run

ROOT = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------- arguments
def test_parse_args_defaults_and_lists():
    a = run.parse_args([])
    assert a.suite == list(run.SUITES) and a.device is None and not a.quick and a.compare is None
    a = run.parse_args(["--device", "cpu", "--suite", "kernels,e2e", "--quick", "--dtype", "fp32,bf16",
                        "--budget-s", "30", "--ops", "swiglu"])
    assert a.suite == ["kernels", "e2e"] and a.quick and a.dtype == ["fp32", "bf16"] and a.budget_s == 30.0
    assert a.ops == ["swiglu"]


@pytest.mark.parametrize("argv, message", [
    (["--suite", "kernels,nope"], "unknown suite nope"),
    (["--device", "tpu"], "invalid choice"),
    (["--dtype", "fp8"], "unknown dtype fp8"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--budget-s", "-1"], "--budget-s must be > 0"),
    (["--compare", "/nonexistent/base.json"], "no such file"),
    (["--e2e-frames", "0"], "--e2e-frames must be >= 1"),
    (["--e2e-providers", "sat,tensorrt"], "unknown e2e provider tensorrt"),
], ids=["suite", "device", "dtype", "threads", "budget", "compare", "e2e-frames", "e2e-providers"])
def test_parse_args_rejects(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@no_cuda
def test_cuda_without_gpu_is_a_one_line_error():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, "-m", "bench", "--device", "cuda"], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "CUDA is not available" in lines[0] and "--device cpu" in lines[0], p.stderr
    assert p.stdout == ""


def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert common.resolve_device(None) == "cpu"
    with pytest.raises(common.NoDevice, match="CUDA is not available"):
        common.resolve_device("cuda")


# ------------------------------------------------------------------------------------------- smoke runs
def _run_quick(tmp_path, *extra) -> dict:
    rc = run.main(["--device", "cpu", "--quick", "--threads", "1", "--out", str(tmp_path), "--no-readme",
                   "--no-plots", *extra])
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and (tmp_path / (files[0].stem + ".md")).is_file()
    result = json.loads(files[0].read_text())
    failed = [(r["op"], r["provider"], r["notes"]) for r in result["rows"] if r["status"] == "failed"]
    assert rc == 0 and not failed, failed
    for key in ("device_name", "torch", "triton", "commit", "date", "peaks", "rows"):
        assert key in result, key
    assert result["peaks"]["copy_GBps"] > 0 and result["peaks"]["matmul_TFLOPs"] > 0
    for r in result["rows"]:
        if r["status"] == "skipped":
            assert r["notes"], f"skipped row without a reason: {r}"
        else:
            assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"], r
            assert r["peak_mem_mb"] is None or r["peak_mem_mb"] > 0
    return result


def _ok(result, **match):
    return [r for r in result["rows"] if r["status"] == "ok" and all(r[k] == v for k, v in match.items())]


def test_kernels_quick(tmp_path, capsys):
    # adaln, gated residual and SwiGLU: cheap enough to run the Triton providers under the interpreter (conftest).
    res = _run_quick(tmp_path, "--suite", "kernels", "--ops", "adaln,gated,swiglu")
    ops = {r["op"] for r in res["rows"]}
    assert ops == {"adaln_layer_norm", "gated_residual", "swiglu"}
    for op in ops:
        for prov in ("eager", "arc_fast-eager", "triton"):
            modes = {r["mode"] for r in _ok(res, op=op, provider=prov)}
            assert modes == {"fwd", "bwd", "fwd+bwd"}, (op, prov, modes)
        comp = [r for r in res["rows"] if r["op"] == op and r["provider"] == "compile"]
        assert comp and all(r["status"] == "skipped" and "--quick" in r["notes"] for r in comp)
    r = _ok(res, op="swiglu", provider="triton", mode="fwd")[0]
    assert r["metric"] == "GB/s" and r["value"] > 0 and r["max_err"] is not None
    assert common.NOT_A_FIGURE in r["notes"]
    assert _ok(res, op="swiglu", provider="eager", mode="bwd")[0]["speedup"] == pytest.approx(1.0)
    assert "| swiglu |" in capsys.readouterr().out


def test_decoder_quick(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # the interpreted decoder would take minutes
    res = _run_quick(tmp_path, "--suite", "decoder", "--dtype", "fp32,bf16")
    assert _ok(res, provider="reference") and _ok(res, provider="arc_fast-eager")
    tri = [r for r in res["rows"] if r["provider"] == "arc_fast-triton"][0]
    assert tri["status"] == "skipped" and "TRITON_INTERPRET" in tri["notes"]
    cuda = [r for r in res["rows"] if r["provider"] == "arc_fast-cuda"][0]
    assert cuda["status"] == "skipped" and "CUDA" in cuda["notes"]
    r = _ok(res, provider="arc_fast-eager")[0]
    assert r["metric"] == "TFLOP/s" and r["speedup"] > 0 and r["ours"]


def test_e2e_quick(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # the pipeline would run interpreted Triton kernels
    res = _run_quick(tmp_path, "--suite", "e2e")
    tot = "total (text -> audio)"
    totals = {r["provider"]: r for r in res["rows"] if r["op"] == tot}
    sat = totals.get("stable-audio-tools")
    base = "stable-audio-tools" if sat is not None else "reference"
    if sat is None:  # not installed: the oracle modules are the baseline, the autocast peer says why
        amp = totals["stable-audio-tools autocast-bf16"]
        assert amp["status"] == "skipped" and "install_sat" in amp["notes"]
    assert totals[base]["status"] == "ok"
    for name in ("arc_fast (defaults)", "arc_fast fp32", "arc_fast bf16"):
        r = totals[name]
        assert r["status"] == "ok" and r["ours"] and r["baseline"] == base and r["speedup"] > 0, r
        assert "8 ping-pong steps" in r["shape"] and "SNR" in r["notes"]
        for op in ("conditioner", "dit_step", "decoder"):
            assert _ok(res, op=op, provider=name), (op, name)
        assert _ok(res, op="dit_step", provider=name)[0]["metric"] == "TFLOP/s"
        assert r["extra"]["standalone_mb"] > 0 and r["extra"]["decoder_ms"] > 0
    # Same saved weights, same seed, same sampler: the fp32 pipeline's audio is the reference's up to rounding.
    assert totals["arc_fast fp32"]["extra"]["rel_err"] < 1e-3
    assert totals["arc_fast bf16"]["extra"]["snr_db"] is not None      # bf16 differs: the error is measured
    assert totals["torch.compile"]["status"] == "skipped" and "--quick" in totals["torch.compile"]["notes"]
    ort = totals["onnxruntime"]
    if importlib.util.find_spec("onnxruntime") is None:
        assert ort["status"] == "skipped" and "not installed" in ort["notes"]
    else:
        assert ort["status"] == "ok" and ort["extra"]["rel_err"] < 1e-3, ort
    int8 = totals["arc_fast int8"]
    assert int8["status"] == "ok" or (int8["status"] == "skipped" and "int8" in int8["notes"]), int8
    assert {"flags", "model", "mkldnn_bf16"} <= set(res["cpu"]) and "linear_bf16_TFLOPs" in res["peaks"]
    out = capsys.readouterr().out
    assert "headline table" in out and "| **arc_fast fp32** | fp32 |" in out
    threads = {r["provider"] for r in _ok(res, op="dit_step (threads)")}
    assert "arc_fast threads=1" in threads
    q = _ok(res, op="dit_step (int8)", provider="reference+int8-dynamic")
    assert q and "error vs fp32" in q[0]["notes"]
    own = [r for r in res["rows"] if r["provider"] == "reference+Int8Linear"]
    assert own and (own[0]["status"] == "skipped" or "error vs fp32" in own[0]["notes"])


def test_e2e_cpu_absent_peers_are_skipped_rows(monkeypatch):
    """stable-audio-tools and onnxruntime missing, a chosen subset of providers: the missing peers are skipped
    rows with their reason, the oracle modules are the baseline and the reference audio, nothing fails."""
    from bench import e2e_cpu, models
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(models, "load_sat", lambda *a: (None, "stable-audio-tools absent in this test"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)     # import -> ImportError
    import arc_fast.cpu
    monkeypatch.setattr(arc_fast.cpu, "torchao_available", lambda: "torchao is not usable (hidden by this test)")
    ctx = common.Context(device="cpu", quick=True, compile=False,
                         options={"e2e_providers": ["sat", "sat-bf16", "onnx", "fp32", "int8"]})
    rows = e2e_cpu.run_cpu(ctx)
    totals = {r.provider: r for r in rows if r.op == "total (text -> audio)"}
    assert set(totals) == {"reference", "stable-audio-tools autocast-bf16", "onnxruntime", "arc_fast fp32",
                           "arc_fast int8"}
    assert totals["arc_fast int8"].status == "skipped" and "hidden by this test" in totals["arc_fast int8"].notes
    assert totals["stable-audio-tools autocast-bf16"].status == "skipped"
    assert "absent in this test" in totals["stable-audio-tools autocast-bf16"].notes
    assert totals["onnxruntime"].status == "skipped" and "onnxruntime / onnx not installed" in totals["onnxruntime"].notes
    ours = totals["arc_fast fp32"]
    assert ours.status == "ok" and ours.baseline == "reference" and ours.extra["rel_err"] < 1e-3
    assert totals["reference"].status == "ok" and totals["reference"].extra["rel_err"] == 0
    assert not [r for r in rows if r.status == "failed"]
    assert not [r for r in rows if "threads" in r.op]           # extras not chosen


def test_audio_error_snr():
    from bench.e2e_cpu import audio_error
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 2, 4000, generator=g)
    noise = torch.randn(1, 2, 4000, generator=g)
    noise *= 0.01 * ref.norm() / noise.norm()                 # noise power 1e-4 of the signal's: 40 dB
    e = audio_error(ref + noise, ref)
    assert e["finite"] and e["snr_db"] == pytest.approx(40.0, abs=1e-6)
    assert e["rel_err"] == pytest.approx((noise.abs().max() / ref.abs().max()).item(), rel=1e-4)  # ref + noise rounds in fp32
    assert audio_error(torch.cat([ref, ref], -1), ref)["snr_db"] is None      # identical over the common length
    bad = ref.clone()
    bad[0, 0, 7] = float("nan")
    assert audio_error(bad, ref)["finite"] is False


def test_train_step_quick(tmp_path):
    res = _run_quick(tmp_path, "--suite", "train-step")
    for op in ("G step", "D step"):
        for prov in ("arc_fast", "reference"):
            r = _ok(res, op=op, provider=prov)
            assert r and r[0]["metric"] == "tokens/s" and r[0]["value"] > 0, (op, prov)


def test_budget_exhausted_rows_are_skipped(tmp_path):
    res = _run_quick(tmp_path, "--suite", "kernels", "--ops", "swiglu", "--budget-s", "0.001")
    assert res["rows"] and all(r["status"] == "skipped" for r in res["rows"])
    assert any("time budget exhausted" in r["notes"] for r in res["rows"])


def test_sigterm_mid_suite_keeps_the_finished_rows(tmp_path, monkeypatch):
    """A GPU loan's `timeout` sends SIGTERM: the rows finished so far, including the stopped suite's own, are
    written (JSON + markdown) with a note, and the exit code says it was stopped."""
    import signal
    import types

    def fake_run(ctx):
        rows = ctx.collect()
        rows.append(common.Row("e2e", "total", "B1", "fp32", "arc_fast", "fwd", ours=True, notes="finished"))
        os.kill(os.getpid(), signal.SIGTERM)      # the handler raises in this thread, here
        rows.append(common.Row("e2e", "total", "B8", "fp32", "arc_fast", "fwd", notes="never reached"))
        return rows

    monkeypatch.setitem(run.SUITES, "e2e", "fake_e2e_suite")
    monkeypatch.setitem(sys.modules, "fake_e2e_suite", types.SimpleNamespace(run=fake_run))
    old = signal.getsignal(signal.SIGTERM)
    try:
        code = run.main(["--device", "cpu", "--quick", "--suite", "e2e,kernels", "--out", str(tmp_path),
                         "--no-plots", "--no-readme"])
    finally:
        signal.signal(signal.SIGTERM, old)
    assert code == 124
    res = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert [r["notes"] for r in res["rows"]] == ["finished"]            # kernels never started
    assert any("stopped by SIGTERM during suite 'e2e'" in n for n in res["notes"])
    assert "finished" in next(tmp_path.glob("*.md")).read_text()


# ------------------------------------------------------------------------------------------- peers
def _hide(monkeypatch, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_missing_peers_give_reasons(monkeypatch, device):
    # Only the provider lists are built (nothing runs), so the CUDA context works on a CPU machine.
    _hide(monkeypatch, "flash_attn", "liger_kernel")
    ctx = common.Context(device=device, quick=True, dtypes=(torch.bfloat16,))
    cases = {c.op: c for c in kernels.build_cases(ctx)}
    assert {"attention_self", "attention_cross", "rope", "adaln_layer_norm", "gated_residual", "swiglu",
            "snake_conv1d", "snake_conv_transpose1d"} <= set(cases)

    def provs(op):
        return {p.name: p for p in cases[op].providers(ctx, cases[op], torch.bfloat16)}
    att = provs("attention_self")
    assert att["flash_attn"].fn is None and att["flash_attn"].reason == "flash-attn not installed"
    assert att["sdpa"].fn is not None and att["eager"].fn is not None
    for op in ("swiglu", "adaln_layer_norm", "rope"):
        assert provs(op)["liger"].fn is None and "Liger-Kernel not installed" in provs(op)["liger"].reason
    conv = provs("snake_conv1d")
    assert conv["cuda"].fn is None and "CUDA" in conv["cuda"].reason
    tri = att["triton"]
    if device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":   # --quick times the interpreter
        assert tri.fn is not None and tri.reason is None
    else:
        assert tri.fn is None and "TRITON_INTERPRET=1" in tri.reason


def test_missing_peer_rows_are_skipped_not_failed(monkeypatch):
    _hide(monkeypatch, "liger_kernel")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ctx = common.Context(device="cpu", quick=True, dtypes=(torch.float32,), compile=False)
    case = next(c for c in kernels.build_cases(ctx) if c.op == "swiglu")
    rows = kernels.run_case(ctx, case, torch.float32)
    by = {(r.provider, r.mode): r for r in rows}
    assert by[("liger", "fwd")].status == "skipped" and "not installed" in by[("liger", "fwd")].notes
    assert by[("triton", "bwd")].status == "skipped" and "interpreter" in by[("triton", "bwd")].notes
    assert by[("compile", "fwd")].status == "skipped"
    assert by[("eager", "fwd")].status == "ok" and by[("arc_fast-eager", "fwd+bwd")].status == "ok"


def test_a_wrong_provider_fails_its_check_and_is_not_timed():
    ctx = common.Context(device="cpu", quick=True, dtypes=(torch.float32,), compile=False)
    case = next(c for c in kernels.build_cases(ctx) if c.op == "swiglu")
    wrong = kernels.Provider("wrong", lambda x: kernels._as_list(case.ref(x))[0] * 1.01)
    case.providers = lambda ctx, case, dtype: [wrong]
    rows = kernels.run_case(ctx, case, torch.float32)
    assert [r.status for r in rows] == ["failed"] * 3 and all(r.median_ms is None for r in rows)
    assert "check failed" in rows[0].notes


# ------------------------------------------------------------------------------------------- helpers
def test_check_close_bounds():
    ref = torch.linspace(-3, 3, 101)
    assert common.check_close("same", ref.clone(), ref, None, torch.float32) == 0.0
    with pytest.raises(common.CheckError, match="max\\|out - oracle\\|"):
        common.check_close("off", ref + 0.01, ref, None, torch.float32)
    low = ref.bfloat16()
    common.check_close("bf16", low, ref, low, torch.bfloat16)
    with pytest.raises(common.CheckError, match="non-finite"):
        common.check_close("nan", torch.full_like(ref, float("nan")), ref, None, torch.float32)
    with pytest.raises(common.CheckError, match="shape"):
        common.check_close("shape", ref[:5], ref, None, torch.float32)
    # An analytically zero gradient is rounding of the computation's terms: its floor follows their size.
    zero, noise = torch.zeros(8), torch.full((8,), 2e-5)
    with pytest.raises(common.CheckError):
        common.check_close("zero grad", noise, zero, None, torch.float32)
    common.check_close("zero grad", noise, zero, None, torch.float32, floor_scale=25.0)


def test_time_cpu_repeats_and_quantiles():
    calls = []
    t = common.time_cpu(lambda: calls.append(1), min_reps=7, min_time_s=0.0, max_reps=9, warmup=2)
    assert len(calls) == 9 and t.n == 7 and t.min_ms <= t.p20_ms <= t.median_ms <= t.p80_ms
    s = common.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.min_ms, s.median_ms, s.p20_ms, s.p80_ms) == (1.0, 3.0, 1.8, 4.2)
    assert common.summarize([2.0, 1.0]).p20_ms is None


def _result(rows):
    env = {"device_name": "test", "device_type": "cpu", "commit": "abc", "date": "d"}
    peaks = {"copy_GBps": 10.0, "matmul_TFLOPs": 1.0}
    return common.result_dict(env, peaks, rows, {}, [])


def test_speedups_best_peer_markdown_compare():
    mk = lambda prov, ms, ours=False: common.Row("kernels", "op", "s", "fp32", prov, "fwd", median_ms=ms,  # noqa: E731
                                                 min_ms=ms, ours=ours)
    rows = [mk("eager", 4.0), mk("compile", 2.0), mk("triton", 1.0, True),
            common.skipped("kernels", "op", "s", "fp32", "liger", "fwd", "Liger-Kernel not installed")]
    common.fill_speedups(rows, {"kernels": ("eager",)})
    assert rows[2].speedup == 4.0 and rows[1].speedup == 2.0 and rows[2].baseline == "eager"
    res = _result(rows)
    assert res["best_peer"] == [{"suite": "kernels", "op": "op", "shape": "s", "dtype": "fp32", "mode": "fwd",
                                 "ours": "triton", "ours_ms": 1.0, "best_peer": "compile", "peer_ms": 2.0, "ratio": 2.0}]
    md = common.markdown(res)
    assert "| op | s | fp32 | **triton** | fwd | 1 |" in md and "Liger-Kernel not installed" in md
    slower = [mk("eager", 4.0), mk("compile", 2.0), mk("triton", 2.0, True)]
    cmp = common.compare(_result(slower), res)
    assert "triton | fwd | 1 | 2 | 2.00 | slower" in cmp and "1 slower" in cmp


def test_update_readme_replaces_its_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro\n")
    common.update_readme(readme, "cpu-x", "table one\n")
    common.update_readme(readme, "cuda-y", "gpu table\n")
    common.update_readme(readme, "cpu-x", "table two\n")
    text = readme.read_text()
    assert text.count("bench:results:cpu-x -->") == 2 and "table two" in text and "table one" not in text
    assert "gpu table" in text and text.startswith("# Benchmarks\n\nintro")


def test_plots(tmp_path, monkeypatch):
    rows = [common.Row("kernels", "op", "s", "fp32", p, "fwd", median_ms=ms, min_ms=ms)
            for p, ms in (("a", 1.0), ("b", 2.0))]
    from bench import plotting
    if importlib.util.find_spec("matplotlib") is not None:
        line = plotting.plot_all(_result(rows), tmp_path, "dev")
        assert "dev-kernels.png" in line and (tmp_path / "dev-kernels.png").stat().st_size > 1000
    _hide(monkeypatch, "matplotlib")
    assert "matplotlib is not installed" in plotting.plot_all(_result(rows), tmp_path, "dev")


def test_configs_shapes():
    from bench import configs
    cfg = configs.sao_config()
    d = configs.dit_dims(cfg)
    assert (d.dim, d.heads, d.head_dim, d.rot_dim, d.cond_tokens, d.cond_dim) == (1024, 8, 128, 64, 65, 768)
    assert configs.dit_tokens(256, cfg) == 257
    stages = configs.decoder_stages(configs.decoder_config(cfg), 256)
    assert stages[0] == (2048, 1024, 8, 256) and stages[-1] == (128, 128, 2, 262144)
    assert cfg["model"]["conditioning"]["configs"][0]["type"] == "hash_text"


def test_flop_counts_match_hand_formulas():
    from bench import configs, models
    dec = dict(out_channels=2, channels=4, latent_dim=3, c_mults=[1, 2], strides=[2, 2], use_snake=True,
               final_tanh=False)
    T = 5
    # first conv 3->8 k7 at T; block 8->4 s2 (tconv k4 over T inputs), RUs (k7 + k1) at 2T; block 4->4 s2, RUs at 4T;
    # final 4->2 k7 at 4T.
    hand = 2 * (3 * 8 * 7 * T + 8 * 4 * 4 * T + 3 * (4 * 4 * 7 + 4 * 4) * 2 * T + 4 * 4 * 4 * 2 * T
                + 3 * (4 * 4 * 7 + 4 * 4) * 4 * T + 4 * 2 * 7 * 4 * T)
    assert models.decoder_flops(dec, T, 1) == hand
    assert models.decoder_flops(dec, T, 3) == 3 * hand
    cfg = configs.sao_config()
    per_step = models.dit_step_flops(cfg, 256, 1, 65)
    assert 1.5e11 < per_step < 1.8e11   # ~2 x 341M params x 257 tokens + attention


def test_e2e_cuda_path_dry_run_on_cpu(monkeypatch):
    """The CUDA e2e code (bf16 models, checks, pipeline rows) run on the CPU with the tiny config: only the
    CUDA-graph row cannot run and says so."""
    from bench import e2e
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.set_num_threads(1)
    ctx = common.Context(device="cpu", quick=True, dtypes=(torch.bfloat16,), log=lambda m: None)
    rows = e2e.run_cuda(ctx)
    by = {(r.op, r.provider): r for r in rows}
    assert not [r for r in rows if r.status == "failed"], [(r.provider, r.notes) for r in rows if r.status == "failed"]
    for prov in ("reference", "arc_fast"):
        for op in ("dit_step", "decoder", "total (text -> audio)"):
            assert by[(op, prov)].status == "ok" and by[(op, prov)].dtype == "bf16", (op, prov)
    assert by[("total (text -> audio)", "arc_fast+graph")].notes == "CUDA graphs need CUDA"
    assert by[("total (text -> audio)", "arc_fast+cuda-decoder")].status == "skipped"
    assert by[("total (text -> audio)", "pipeline")].status == "ok"
    assert by[("total (text -> audio)", "pipeline cuda_graph=True")].notes == "CUDA graphs need CUDA"
    assert "last run: conditioner" in by[("total (text -> audio)", "pipeline")].notes
    assert by[("conditioner", "hash_text")].status == "ok"


def test_e2e_cuda_row_failing_its_check_is_still_timed(monkeypatch):
    """A provider that fails the accuracy check gets a 'failed' row that still carries its times (a GPU loan is
    too short to rerun), marked as not a result; the other providers are unaffected."""
    from bench import e2e
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.set_num_threads(1)
    real = e2e.check_close

    def strict(name, *args, **kw):
        if name == "e2e/arc_fast dit_step":
            raise common.CheckError("planted")
        return real(name, *args, **kw)

    monkeypatch.setattr(e2e, "check_close", strict)
    ctx = common.Context(device="cpu", quick=True, dtypes=(torch.bfloat16,), log=lambda m: None)
    rows = e2e.run_cuda(ctx)
    mine = [r for r in rows if r.provider == "arc_fast"]
    assert [(r.op, r.status) for r in mine] == [("total (text -> audio)", "failed")]
    assert "check failed: planted; timed anyway, not a result: DiT step" in mine[0].notes
    assert mine[0].median_ms is None
    ref = {r.op: r.status for r in rows if r.provider == "reference"}
    assert ref == {"dit_step": "ok", "decoder": "ok", "total (text -> audio)": "ok"}


def test_render_existing_result(tmp_path, capsys):
    rows = [common.Row("e2e", "total (text -> audio)", "B1 x", "fp32", p, "fwd", median_ms=ms, min_ms=ms, ours=o)
            for p, ms, o in (("stable-audio-tools", 12.0, False), ("arc_fast", 10.0, True))]
    common.fill_speedups(rows, run.BASELINES)
    src = tmp_path / "dev.json"
    common.write_json(_result(rows), src)
    out = tmp_path / "out"
    assert run.main(["--render", str(src), "--out", str(out), "--no-plots"]) == 0
    md = (out / "dev.md").read_text()
    assert "headline" in md and "**arc_fast** 10 ms median (10 min), 1.20x vs stable-audio-tools" in md
    assert md in capsys.readouterr().out
