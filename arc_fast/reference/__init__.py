"""Eager PyTorch reference models, state-dict compatible with Stable Audio Open: the oracle."""
from .conditioners import HashTextEncoder, MultiConditioner, NumberConditioner, T5Conditioner
from .dit import DiffusionTransformer

__all__ = ["DiffusionTransformer", "OobleckDecoder", "OobleckEncoder", "OobleckAutoencoder", "HashTextEncoder",
           "MultiConditioner", "NumberConditioner", "T5Conditioner"]


def __getattr__(name):
    # The autoencoder module is imported lazily so that a DiT-only user does not pay for it.
    if name in ("OobleckDecoder", "OobleckEncoder", "OobleckAutoencoder"):
        from . import autoencoder
        return getattr(autoencoder, name)
    raise AttributeError(name)
