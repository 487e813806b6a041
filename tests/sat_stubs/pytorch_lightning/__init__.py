"""Stub pytorch_lightning for the stable-audio-tools 0.0.20 interop test.

0.0.20's ``models/lora/callbacks.py`` (pulled in by ``models.dit``) subclasses ``pl.Callback`` and
``pl.callbacks.ModelCheckpoint`` at import time; the DiT forward never touches them.
"""
from . import callbacks  # noqa: F401
from .callbacks import Callback  # noqa: F401

__version__ = "0.0.0+arc_fast_stub"
