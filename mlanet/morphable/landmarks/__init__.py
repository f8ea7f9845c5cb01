"""Landmark definitions on a face model's surface (``definitions``), their file (``file``; the shipped one is
in ``data/``), fitting the face model to 2D landmarks (``fit``) and building the definitions from training
data (``build``, ``mlanet assets landmarks``: ``cli``)."""
