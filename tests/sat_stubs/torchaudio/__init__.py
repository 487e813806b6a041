"""Stub torchaudio for the stable-audio-tools interop test: importable, but any transform raises.

The real wheel cannot be loaded with torch 2.13 (ABI mismatch); the interop test never resamples audio.
"""
from . import transforms  # noqa: F401

__version__ = "0.0.0+arc_fast_stub"
