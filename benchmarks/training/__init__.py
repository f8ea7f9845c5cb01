"""Helpers of training runs made on a lent GPU machine.

:mod:`.collect_device_run` turns what ``benchmarks/training/device_stage4.sh`` sent back into a run folder
(``python -m mlanet.benchmarks.training.collect_device_run``); the shell script itself stays in the
checkout (it is not a package file).
"""
