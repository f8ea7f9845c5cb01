#!/usr/bin/env bash
# Everything the deployment path needs a GPU for, in one go: the gpu/trt tests, the issue-5 targets
# (`mlanet bench gpu`), the latency curves of the GPU backends, then the summary.
#
# Needs: an NVIDIA GPU, PyTorch with CUDA, this project installed (`pip install -e ".[edge,export,dev]"`). Optional:
# TensorRT 10 + pycuda (docs/tensorrt.md); without them the TensorRT rows are recorded as skipped
# with the reason, and the torch-cuda-fp16 numbers are what is measured.
#
# Usage: bash benchmarks/gpu_session.sh [OUT]      (OUT default: benchmarks/results)
# Records: OUT/<gpu name>/{gpu_targets,model_latency}.json; logs: OUT/gpu_logs/.
# Commit the records with the logs' first lines (the command and versions are inside each record).
set -uo pipefail

out=${1:-benchmarks/results}
py=${PYTHON:-python}
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_session.sh: no CUDA GPU visible to PyTorch ($("$py" -c 'import torch; print(torch.__version__)'))" >&2
    exit 2
fi
logs="$out/gpu_logs"
mkdir -p "$logs"
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1 || true
status=0

echo "== gpu and trt tests (values printed with -s: parity in mm, kernel differences)"
"$py" -m pytest -q -rs -s -m "gpu or trt" \
    tests/test_gpu_paths.py tests/test_pipeline_gpu_mode.py tests/test_backend_device.py tests/test_tensorrt_engine.py \
    2>&1 | tee "$logs/pytest_gpu.log" || status=1

echo "== mlanet bench gpu (the targets)"
"$py" -m mlanet.cli bench gpu --out "$out" 2>&1 | tee "$logs/bench_gpu.log" || status=1

echo "== mlanet bench model on the GPU backends"
"$py" -m mlanet.cli bench model --backends torch-cuda-fp16,tensorrt --out "$out" 2>&1 \
    | tee "$logs/bench_model.log" || status=1

echo "== summary"
"$py" -m mlanet.cli bench report --out "$out" 2>&1 | tee "$logs/bench_report.log" || status=1
exit $status
