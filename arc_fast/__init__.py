"""arc-fast: fused kernels, ARC post-training and few-step sampling for Stable-Audio-style text-to-audio."""
__version__ = "0.1.0"
