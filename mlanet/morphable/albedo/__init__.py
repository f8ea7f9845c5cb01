"""Albedo models of a face model: the regional one (``regional``, hand-made, MIT), the data-driven PCA model
(``fit``: built from training photos listed with their terms in ``sources``), and the file that carries
either (``file``; the shipped ones are in ``data/``)."""
