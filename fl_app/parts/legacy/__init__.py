"""Flower's legacy API half (``NumPyClient`` messages, ``flwr.server.strategy``) with SecAgg+:
the optional part ``legacy-api`` (with :mod:`strategies.legacy` and
:mod:`strategies.secure`)."""
