#!/usr/bin/env bash
# One-shot GPU check + benchmark suite (issue 5 targets + issue 4 GPU rows), ~5 minutes on one H200.
#
#   tools/analysis/gpu_suite.sh --prepare   # HERE (dev machine): copy the pure-Python OpenMMLab
#                                           # packages of .venv into .gpu_site/ for carrying
#   tools/analysis/gpu_suite.sh             # ON THE GPU MACHINE (run with carry: [".gpu_site"])
#   tools/analysis/gpu_suite.sh --smoke     # HERE: the same commands, tiny sizes, on CPU
#
# The GPU image has torch, triton, numpy, matplotlib, scipy, opencv-python-headless, rich,
# pyyaml, but no OpenMMLab: mmcv imports cv2 at import time, so mmseg (and therefore mmlrf) need
# opencv, which the image has; the rest (mmengine, mmcv-lite, mmsegmentation, mmpretrain and
# their small pure-Python deps) travels in .gpu_site (about 27 MB, ignored by git).
# Writes 8 files to $OUT: dynamics.json, issue5.{json,png}, issue5_tf32.{json,png},
# sweep.{json,png}, suite.log. (--preset issue4 is a subset of issue5 + sweep on GPU.) TF32 is off (fp32 parity); bf16 rows use autocast (models) / bf16 tensors (ops).
set -uo pipefail
cd "$(dirname "$0")/../.."
SITE_PKGS=(addict ftfy importlib_metadata lazy_importer mmcv mmengine mmpretrain mmseg modelindex
           ordered_set platformdirs prettytable termcolor wcwidth yapf yapf_third_party)

if [[ "${1:-}" == "--prepare" ]]; then
    src=$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
    rm -rf .gpu_site && mkdir -p .gpu_site
    for p in "${SITE_PKGS[@]}"; do
        cp -r "$src/$p" .gpu_site/
        cp -r "$src"/"${p}"-*.dist-info .gpu_site/ 2>/dev/null || true
    done
    # dist-info folders spelled differently from the import name
    for d in mmcv_lite mmsegmentation importlib_metadata ordered_set lazy_importer; do
        cp -r "$src"/${d}-*.dist-info .gpu_site/ 2>/dev/null || true
    done
    find .gpu_site -name __pycache__ -prune -exec rm -rf {} +
    grep -qx '/.gpu_site/' .git/info/exclude 2>/dev/null || echo '/.gpu_site/' >> .git/info/exclude
    du -sh .gpu_site
    exit 0
fi

OUT=${OUT:-work_dirs/gpu_suite}
mkdir -p "$OUT"
LOG="$OUT/suite.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
MODEL=configs/_base_/models/fpn_sdtv3.py
if [[ "${1:-}" == "--smoke" ]]; then
    PY=${PYTHON:-.venv/bin/python}
    ARGS=(--smoke --device cpu --warmup 1 --repeats 1)
    LIMIT=600 SMOKE=1 RES_FAST=64x128
else
    ARGS=(--device cuda --warmup 2 --repeats 5)
    LIMIT=95 SMOKE='' RES_FAST=1024x2048
fi

{
    date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    $PY -c "import torch, mmlrf, mmseg, mmengine; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), 'mmseg', mmseg.__version__, 'mmengine', mmengine.__version__)" || exit 1
    if [[ -z "${SMOKE}" ]]; then
        # the Triton kernels' correctness on this GPU first (forward and gradients vs float64 FFT)
        timeout 60 $PY -m pytest tests/test_dynamics_fast.py -q -k "triton or cuda" \
            -p no:cacheprovider 2>&1 | tail -4
    fi
    # the dendritic operator alone: floor, triton / scan / fft, fp32 and bf16
    timeout 65 $PY tools/analysis/bench_dynamics_gpu.py ${SMOKE:+--smoke} --budget 45 \
        --out "$OUT/dynamics.json" | grep -v Warning
    # issue 5 targets (TF32 off: fp32 as the parity check needs it)
    timeout $LIMIT $PY tools/analysis/benchmark.py --preset issue5 "${ARGS[@]}" --out "$OUT/issue5"
    # the whole-model rows again with PyTorch/mmseg's usual speed settings (TF32, cuDNN autotune)
    timeout $((LIMIT / 3)) $PY tools/analysis/benchmark.py --config "$MODEL" \
        --variants official lrf_dyn --resolution ${RES_FAST} --modes infer "${ARGS[@]}" \
        --tf32 --cudnn-benchmark --out "$OUT/issue5_tf32"
    # issue 4 rows: 19M official vs LRF-SSA vs LRF-Dyn, 512x512 / 1024x2048, batch 1 / 8
    timeout $LIMIT $PY tools/analysis/benchmark.py --preset sweep "${ARGS[@]}" --out "$OUT/sweep"
    date -u
} 2>&1 | tee "$LOG"
