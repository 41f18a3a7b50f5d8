#!/usr/bin/env bash
# Issue 22's GPU checks as one prepared command for a lent device (one H200, 15 minutes of
# device time a session, 10 minutes a command; the device image has Python 3.12 with torch,
# torchvision, onnx, onnxruntime, OpenCV, pytest and xdist, but not lark).
#
# Here, before the call (lark is pure Python; the device cannot reach a registry):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl 'lark>=1.1' pycocotools ruff
# Then, with the device tool:
#   run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=500)
# Each step has its own time limit (together under 8 minutes, leaving time for a rerun) and
# writes its log under $OUT, so what finished comes back when a later step runs out of time.
set -u
OUT=${OUT:-/tmp/darkcfg-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    # into the interpreter's own environment (the machine is lent whole, and bare each time):
    # the tests' subprocesses set PYTHONPATH themselves
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl
fi
# the steps to run (default all): bash bench/gpu_session.sh [vgg] [detect|detect-inference|...]
WANTED=" ${*:-vgg detect tests} "
step() {  # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.txt, say how it ended
    local name=$1 limit=$2
    shift 2
    [[ $WANTED == *" $name "* || $WANTED == *" ${name%%-*} "* ]] || return 0
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.txt"
    echo "== $name: exit $rc after $((SECONDS - start))s"
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, \
torch.cuda.get_device_name(0))"
# rows print as each one finishes, eager rows first: a step cut by its limit still reports them
# VGG-16 training against a tuned torchvision loop, MFU (--quick: one compiled row, bf16 NHWC)
step vgg 150 python3 bench/gpu.py --steps 10 --warmup 3 --jpegs 512 --quick
# yolov4-tiny 416: training img/s (AMP, channels-last, compile) and inference FPS at batch 1, 8
step detect-inference 60 python3 bench/gpu_detect.py --steps 10 --warmup 3 --only inference
# `darkcfg detect`'s path end to end (JPEG read, resize, forward, decode, NMS) against its forward
step detect-e2e 90 python3 bench/detect.py --device cuda --image photo --repeat 10
step detect-training 120 python3 bench/gpu_detect.py --steps 10 --warmup 3 --quick \
    --only training
# the whole test suite with CUDA present (the runner's default device is CUDA there); every
# failure listed at the end and in $OUT/tests.xml
step tests 200 python3 -m pytest -q -rfEs -n 14 -p no:cacheprovider --junitxml="$OUT/tests.xml" \
    tests
