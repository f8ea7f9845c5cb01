"""Compatibility shim: the record helpers live in :mod:`mlanet.edge.bench.record` (used by ``mlanet bench``)."""

from mlanet.edge.bench.record import (  # noqa: F401
    RESULTS, environment, load_average_1min, time_call, write_record)
