"""The benchmarks: measured speed, memory and accuracy, recorded as JSON + plots (``mlanet bench``).

Installed as ``mlanet.benchmarks`` from the repository's ``benchmarks/`` folder; it sits on top of the
project, beside the ``mlanet`` command: it uses the core, the runtime (``mlanet.edge``) and the export
(``mlanet.export``) through their public functions, and nothing below imports it. Evaluation protocols and
metrics live in :mod:`mlanet.eval` (and :mod:`mlanet.edge.evaluation`); a benchmark calls them and records
what it measured. The committed records (``benchmarks/results/``) and the shell scripts are not package
files.

Shared by every benchmark: :mod:`.record` (timing statistics and the ``mlanet-bench/1`` record; the run's
environment comes from :mod:`mlanet.run_environment`), :mod:`.shared_data` (where the shared clips and
data are), :mod:`.cli` (the ``mlanet bench`` command).

``mlanet bench PART`` (also ``python -m mlanet.benchmarks.<module>`` for the last five):

* :mod:`.model_latency` (``model``): the network alone per backend and batch size;
* :mod:`.pipeline` (``pipeline``): the edge pipeline on a clip: stages, fps, latency, memory, fps vs faces;
* :mod:`.compare` (``compare``): MediaPipe's face-mesh tracker vs the MLANet pipeline; renderers;
* :mod:`.accuracy` (``accuracy``): AFLW2000-3D CED of several checkpoints on one plot (``mlanet.eval``'s
  scores);
* :mod:`.soak` (``soak``): memory over time; :mod:`.gpu_targets` (``gpu``): the GPU targets;
* :mod:`.report` (``report``): plots and the markdown summary from the records;
* :mod:`.video_end_to_end` (``video-e2e``), :mod:`.encode_presets` (``encode``), :mod:`.display_mesh`
  (``display-mesh``), :mod:`.live_soak` (``live-soak``), :mod:`.mesh_output_sizes` (``mesh-sizes``).

Run as ``python -m mlanet.benchmarks.<module> --help`` (each writes its record with
:func:`.record.write_record`): :mod:`.bench_face_model`, :mod:`.bench_renderer`, :mod:`.bench_synthetic`,
:mod:`.calibrate_detection_box`, :mod:`.data_path`, :mod:`.mobile_ablation`; and two tools that write
figures: :mod:`.failure_cases`, :mod:`.plot_training_curves`. :mod:`.training` holds the helpers of
training runs on a lent GPU machine.
"""
