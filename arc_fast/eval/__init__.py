"""Evaluation of text-to-audio models on the synthetic dataset (``arc-fast eval``): analytic adherence
(pitch, onset rate), a parameter classifier (adherence, embeddings), Fréchet distance, diversity, time."""
from .metrics import cents, estimate_f0, frechet_distance, onset_rate, onset_times, pairwise_diversity

__all__ = ["cents", "estimate_f0", "frechet_distance", "onset_rate", "onset_times", "pairwise_diversity"]
