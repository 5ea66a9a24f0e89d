"""Hashing methods, one module each: deep methods (a head on F7 and a loss, ``deephash.methods.deep``) and
shallow ones (``fit``/``encode`` on features, ``deephash.methods.shallow``), found by name in
:mod:`deephash.methods.registry`."""
