"""Compatibility shim: the record helpers live in :mod:`mlanet.edge.bench.record` (used by ``mlanet bench``)."""

from mlanet.edge.bench.record import RESULTS, environment, time_call, write_record  # noqa: F401
