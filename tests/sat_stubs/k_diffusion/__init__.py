"""Stub k_diffusion for the stable-audio-tools interop test: empty on purpose.

Stable Audio imports ``k_diffusion as K`` at module level but only uses it inside sampler bodies, which the
interop test does not call; an AttributeError there would point here.
"""
