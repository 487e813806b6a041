"""The dispatch layer: one function per fused op, each with eager / triton / cuda implementations.

Model code calls these functions, never a kernel directly. See ``_dispatch`` for how a backend is chosen.
"""
from ._dispatch import BACKENDS, default_backend, forced_backend, interpreter_active, pick_backend, use_backend

__all__ = ["BACKENDS", "default_backend", "forced_backend", "interpreter_active", "pick_backend", "use_backend"]
