"""arc-fast benchmarks: ``python -m bench --device cpu|cuda`` (see bench/README.md and ``bench.run``).

Suites: ``kernels`` (each fused op vs eager / torch.compile / SDPA / flash-attn / Liger), ``decoder`` (the
Oobleck decoder), ``e2e`` (text -> audio, SAO Small, 8 ping-pong steps; on the CPU against the public
stable-audio-tools code), ``train-step`` (one ARC G and D step). Importing this package runs nothing.
"""
