"""Triton kernels of arc-fast, installed as ``arc_fast.kernels``.

One file per fused op family (attention, rope, adaln, swiglu, snake_conv). Each file holds the
``@triton.jit`` kernels, their checked launchers and the ``torch.library`` registration; nothing else.
Importing this package never imports triton: import the op modules you need.
"""
