"""Benchmarks: scripts over the library, one module per ``deephash-bench <name>`` subcommand, sharing the
helpers of :mod:`deephash.benchmarks.common`. The library never imports them."""
