"""CUDA graphs for ``Pipeline(..., cuda_graph=True)``: the sampling loop and the decode of one call shape,
captured once and replayed.

The captured loop is ``arc_fast.sampling.run`` itself (same ``Sampler`` arithmetic as the eager path), fed
from static buffers: the start latents, the ping-pong noise of every step (``Sampler.predraw``: the draws
the eager loop makes, in its order) and the conditioning. A replay therefore computes what the eager sampler
computes from the same seed. On a CPU tensor nothing is captured and the same loop runs eagerly, which is
how the CPU tests check its arithmetic and noise order.
"""
from __future__ import annotations

import time

import torch

from . import sampling

MAX_CACHED = 4  # each graph pins its activations: keep the most recent shapes only


class GraphRunner:
    """The sampling loop and the decode of one call shape, captured as two CUDA graphs (one pool).

    dit: the model ``sampling.run`` calls; decode(latents) -> audio; x (B, C, T) and cond: example inputs
    (their shapes and dtypes are fixed by the capture); ts (steps + 1,) fp32; sampler 'euler' | 'pingpong'
    (rectified flow). Two graphs rather than one only so that the DiT and the decoder are timed apart (CUDA
    events, no host sync between them)."""

    def __init__(self, dit, decode, x: torch.Tensor, ts: torch.Tensor, sampler: str, cfg_scale: float, cond: dict):
        self.plan = sampling.Sampler(sampler, ts.to(x.device), "rf")
        self.steps, self.sampler = self.plan.steps, sampler
        self.x = x.clone()
        n_eps = sum(self.plan.draws_noise(i) for i in range(self.steps))
        self.eps = x.new_empty((n_eps,) + tuple(x.shape)) if sampler == "pingpong" else None
        self.cond = {k: v.clone() for k, v in cond.items()}

        def loop():
            # sampling.run opens the DiT's conditioning scope per run: the captured graph computes the text
            # context from the static buffers in its first step, so a replay never sees the capture's.
            finite = sampling.FiniteSteps()
            x = sampling.run(dit, self.x, self.plan, lambda i, x: self.eps[i], cfg_scale=cfg_scale,
                             cond=self.cond, on_step=finite)
            return x, torch.stack(finite.flags)

        self.capture = x.device.type == "cuda"
        if not self.capture:
            self.loop, self.decode = loop, decode
            return
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):   # autotuning, plan caches and first allocations stay out of the capture
            for _ in range(2):
                decode(loop()[0])
        torch.cuda.current_stream(x.device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        self.g_loop, self.g_dec = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.g_loop, pool=pool):
            self.latents, self.flags = loop()
        with torch.cuda.graph(self.g_dec, pool=pool):
            self.audio = decode(self.latents)

    def __call__(self, x: torch.Tensor, eps: torch.Tensor | None, cond: dict):
        """Replay on new inputs (x (B, C, T); eps (n, B, C, T) from ``Sampler.predraw`` or None; cond): returns
        (latents, audio, per-step finite flags (steps,) bool, DiT ms, decoder ms); the outputs are the
        graphs' static buffers, overwritten by the next replay."""
        self.x.copy_(x)
        if self.eps is not None and eps is not None:
            self.eps.copy_(eps)
        for k, v in cond.items():
            self.cond[k].copy_(v)
        if not self.capture:
            t0 = time.perf_counter()
            self.latents, self.flags = self.loop()
            t1 = time.perf_counter()
            self.audio = self.decode(self.latents)
            return self.latents, self.audio, self.flags, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        ev[0].record()
        self.g_loop.replay()
        ev[1].record()
        self.g_dec.replay()
        ev[2].record()
        ev[2].synchronize()
        return self.latents, self.audio, self.flags, ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2])


_GraphRunner = GraphRunner  # the older private name (bench/e2e.py)


def cached_runner(cache: dict, key: tuple, build) -> GraphRunner:
    """The runner of ``key`` from ``cache`` (an insertion-ordered dict, most recently used last), else
    ``build()``; keeps at most ``MAX_CACHED`` runners, dropping the least recently used."""
    runner = cache.pop(key, None)
    if runner is None:
        while len(cache) >= MAX_CACHED:
            cache.pop(next(iter(cache)))
        runner = build()
    cache[key] = runner
    return runner


def sample_and_decode(cache: dict, dit, decode, decode_dtype: torch.dtype, x: torch.Tensor, ts: torch.Tensor,
                      sampler: str, cfg_scale: float, generator: torch.Generator, cond: dict):
    """One generation through the cached runner of this call shape (captured on first use).

    x (B, C, T): the start latents; ts (steps + 1,) fp32; the per-step noise is drawn from ``generator`` here,
    as the eager loop would draw it. decode(latents) -> audio runs in ``decode_dtype`` (part of the cache key).
    Returns (latents (a copy), audio (the runner's buffer), first non-finite DiT step as (index, t) or None,
    seconds per step (list), decoder seconds)."""
    steps = ts.shape[0] - 1
    eps = sampling.Sampler(sampler, ts, "rf").predraw(x, generator)
    key = (tuple(x.shape), x.dtype, decode_dtype, steps, sampler, float(cfg_scale), float(ts[0]),
           tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in cond.items())))
    runner = cached_runner(cache, key, lambda: GraphRunner(dit, decode, x, ts, sampler, cfg_scale, cond))
    latents, audio, flags, dit_ms, dec_ms = runner(x, eps, cond)
    first_bad = None
    if not bool(flags.all()):
        i = int((~flags).nonzero()[0, 0])
        first_bad = (i, float(ts[i]))
    return latents.clone(), audio, first_bad, [dit_ms / 1e3 / steps] * steps, dec_ms / 1e3
