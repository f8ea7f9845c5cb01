"""Edge runtime (installed as ``mlanet.edge``): frame sources, tracking, backends, GL rendering.

The runtime arrives with the edge issue; this package exists so the layout and the namespace
mapping (``edge/`` -> ``mlanet.edge``) are fixed and tested from the start.
"""
