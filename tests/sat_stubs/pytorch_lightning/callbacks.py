"""Stub ``pytorch_lightning.callbacks``: base classes only, so subclass definitions import."""


class Callback:
    pass


class ModelCheckpoint(Callback):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("pytorch_lightning.callbacks.ModelCheckpoint is a stub (tests/sat_stubs)")
