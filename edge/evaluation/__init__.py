"""Evaluations of the video runtime (they run :class:`mlanet.edge.pipeline.FacePipeline` over clips):
landmark jitter (:mod:`.jitter`) and expression tracking (:mod:`.expressions`); ``mlanet eval jitter`` /
``mlanet eval expressions`` (:mod:`.cli`)."""
