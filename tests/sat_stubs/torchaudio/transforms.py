"""Stub ``torchaudio.transforms``: the classes exist so module-level imports succeed; using one raises."""


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"torchaudio.transforms.{type(self).__name__} is a stub (tests/sat_stubs): "
                           "the real torchaudio is not installed for the interop test")


class Resample(_Unavailable):
    pass


class Spectrogram(_Unavailable):
    pass


class MelSpectrogram(_Unavailable):
    pass
