"""Evaluating a shallow hashing method (``deephash.methods``) like a trained network: fit, encode, index,
evaluate (``deephash-baseline``)."""
