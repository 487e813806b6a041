"""Eager PyTorch reference models, state-dict compatible with Stable Audio Open: the oracle."""
