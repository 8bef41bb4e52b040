#!/usr/bin/env bash
# One session on a borrowed GPU machine, as one prepared script: CUDA checks, the CUDA benchmark,
# then training of the shipped model, with everything worth keeping written to OUT.
#
# Here (needs pip access and the photos: `lorair data fetch`):
#   bash tools/gpu_session.sh prepare [START.safetensors]
#     -> .gpu/ (git-ignored, ~50 MB): wheels the GPU image lacks, the photos, the starting weights
# There (the device tool: carry [".gpu"], timeout ~590 s), from the repository root:
#   bash tools/gpu_session.sh run "$OUT" [SCALE]
#     SCALE multiplies the training minutes (1: at most 6.2 min of training, the rest of the call's ~9.5 min
#     going to the checks and the bench on an H200; 0.02 for a dry
#     run here with DEVICE=cpu BENCH=0 PY=.venv/bin/python)
# Back here: cat OUT/run.tar.part* | tar x -C RUN_DIR, then `lorair eval` and the export (README).
set -u
cmd=${1:?prepare or run}
root=$(cd "$(dirname "$0")/.." && pwd)
gpu=$root/.gpu

if [ "$cmd" = prepare ]; then
    # the default model (lite) as shipped; PRESET=lorair-compact (and its file) trains the bigger one
    start=${2:-$root/resources/weights/${PRESET:-lorair-lite}.safetensors}
    photos=${XDG_CACHE_HOME:-$HOME/.cache}/lorair-desktop/photos
    [ -d "$photos" ] || { echo "no photos in $photos: run 'lorair data fetch' first" >&2; exit 1; }
    rm -rf "$gpu" && mkdir -p "$gpu/whl" "$gpu/xdg/lorair-desktop"  # generated only: start clean
    # The GPU image has torch, numpy, opencv, safetensors, timm...; not open_clip and these.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$gpu/whl" open_clip_torch==3.3.0 ftfy wcwidth platformdirs || exit 1
    cp -r "$photos" "$gpu/xdg/lorair-desktop/photos"
    cp "$start" "$gpu/start.safetensors"
    du -sh "$gpu"  # with the repository it must stay under the device tool's 64 MiB
    exit 0
fi

[ "$cmd" = run ] || { echo "usage: $0 prepare|run OUT [SCALE]" >&2; exit 2; }
out=${2:?OUT folder}; scale=${3:-1}; device=${DEVICE:-auto}
py=${PY:-python3}
export PYTHONUNBUFFERED=1 XDG_CACHE_HOME=$gpu/xdg
if ! $py -c "import open_clip" 2>/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/lorair-site "$gpu"/whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/lorair-site:$root${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
fi
cd "$root" || exit 1
lorair() { $py -m lorair_desktop.cli "$@"; }
minutes() { awk "BEGIN{print $1 * $scale}"; }
date; nvidia-smi -L 2>/dev/null

# 1. CUDA checks: the restore on the device against the CPU's (fp32 and the bf16 default), a few seconds.
$py - "$device" "resources/weights/${PRESET:-lorair-lite}.safetensors" <<'PYEOF' 2>&1 | tee "$out/cuda-check.txt"
import sys, time
import numpy as np
from lorair_desktop.core.inference import Restorer
from lorair_desktop.core.checkpoint import load_checkpoint
from lorair_desktop.training.evaluate import psnr
from pathlib import Path
img = np.random.default_rng(0).random((768, 1024, 3), dtype=np.float32)
ref = Restorer(load_checkpoint(Path(sys.argv[2])), device="cpu").restore(img).image
for precision in ("fp32", "auto"):
    r = Restorer(load_checkpoint(Path(sys.argv[2])), device=sys.argv[1],
                 precision=precision)
    r.restore(img)  # warm-up
    t = time.perf_counter(); out = r.restore(img).image; dt = time.perf_counter() - t
    print(f"{r.device} {r.dtype}: {psnr(out, ref):.1f} dB from the CPU fp32 image, {dt / (img.size / 3e6):.4f} s/MP")
PYEOF

# 2. The benchmark on this device (the peer and the worker rows need CPU-only extras: skipped).
if [ "${BENCH:-1}" = 1 ]; then  # BENCH=0 skips it (a dry run on a CPU)
    # bounded: the whole script must end inside one call (~590 s), training included
    timeout 60 $py -m lorair_desktop.cli bench --quick --device "$device" --skip peer --json "$out/bench.json" 2>&1 | tail -30
    timeout 35 $py -m lorair_desktop.cli bench --setting1 24 --device "$device" 2>&1 | tail -5
fi

# 3. Training: fine-tune the starting weights' network, annealed over the time left. The router is kept: it
# was fine-tuned with --anchor-prior to route what the network knows (96 % top-1), and lite and compact share it
# (a router run here would need the network retrained after it). The experts stage's full fine-tuning trains
# the base network too; the experts are the weakest part.
run=/tmp/lorair-gpu-run; rm -rf $run
T="train --preset ${PRESET:-lorair-lite} --run-dir $run --device $device --steps 1000000 --time-schedule --val-every 1000 --seed 11"
# The experts' budget shrinks to what the call has left (BUDGET_S, from the script's start), keeping ~70 s for
# the stage's start-up, its final validation and the packing below: a run cut off by the call's limit is lost.
left=$(awk "BEGIN{m = (${BUDGET_S:-575} - $SECONDS - 70) / 60; c = $(minutes 6.2); print (m < c ? m : c)}")
echo "experts: $left min (script at ${SECONDS} s)"
lorair $T --stage experts --init-from "$gpu/start.safetensors" --full --bf16 --batch 64 --crops-per-context 4 \
    --lr 2e-4 --tasks noise=1.5,blur=1.5,jpeg=2.5,rain,haze=1.5,low-light=1.5 --minutes "$left"
grep -o '"data_wait_share": [0-9.]*' $run/run.json
# Files come back at most 16 MiB each: the run (fp32 weights, run.json, the last optimizer state) in parts.
tar -C $run -cf /tmp/lorair-run.tar model.safetensors run.json $(cd $run && ls state-experts.pt 2>/dev/null)
split -b 15m -d /tmp/lorair-run.tar "$out/run.tar.part"
sha256sum /tmp/lorair-run.tar; ls -la "$out"; date
