"""Paper reproduction: ``python -m experiments.reproduce`` (``make reproduce`` / ``make reproduce-smoke``)."""
