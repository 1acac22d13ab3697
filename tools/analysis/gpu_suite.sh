#!/usr/bin/env bash
# One-shot GPU check + benchmark suite for the issue-5 targets on one H200, within a wall-clock
# budget (SUITE_BUDGET, default 540 s, under the device's 600 s per command): each step runs
# under the smaller of its own timeout and what is left, in order of importance; a step that
# finds under 10 s left is logged as SKIPPED.
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
# Output: $OUT/suite.log (streamed) and $OUT/suite.tgz, every step's files, re-packed before each
# step and at the end, so a run stopped at its limit still returns what its finished steps wrote
# (the device returns at most 8 files; unpack with tar xzf suite.tgz). The archive holds, in this
# order: kernel_tests.log (GPU only: the CUDA tests of the Triton kernels and the profiler),
# graph_tests.log (GPU only: the CUDA-graph tests and lean against plain inference, in a process
# of their own with CUDA_LAUNCH_BLOCKING=1: a fault names its kernel and cannot poison the other
# tests' context),
# dynamics.json (operator alone, parameter path per parameterisation, fused and ATen),
# train_interleaved.{json,png} (8x512x512 training steps, official and LRF-Dyn round-robin, with
# the garbage collector's pauses per step), issue5.{json,png} (the
# preset: operators, 1x1024x2048 inference, 8x512x512 training step), tf32_convs.{json,png} (the
# inference, BNs kept / folded, at PyTorch's default precision: TF32 in cuDNN convolutions, fp32
# matrix products; the issue's official numbers match this setting), tf32_wscap.{json,png} (the
# same with cuDNN's workspace capped at WSCAP_MIB, default 64, through PyTorch's
# CUDNN_CONV_WSCAP_DBG), tf32_cap.{json,png} (LRF-Dyn's, uncapped and with the allocator capped
# at CAP_MIB, default 1192 = the 1.25 GB target, above weights and inputs: cuDNN then takes
# algorithms whose workspaces fit), memory_tf32.json (that inference's peak per leaf module:
# the memory in use when each call starts and its transient peak, module_memory.py),
# tf32_plain.{json,png} (LRF-Dyn's inference at TF32, BNs kept / folded, lean as configured and
# with lean inference off: what the row strips and released maps cost or save in time),
# fused.{json,png} (1x1024x2048 inference: BNs kept / folded into the convs, eager / one CUDA
# graph; the graph's memory is its capture peak, graph_pool_mib),
# compiled.{json,png} (LRF-Dyn's inference, eager and under torch.compile; compile_s is the
# compilation), profile{,_fused}.json (where LRF-Dyn's inference time goes),
# profile_train_{official,lrf_dyn}.json (where an 8x512x512 training step's time goes: forward per
# leaf module, backward per autograd node, CUDA kernels), channels_last.{json,png} (the weights
# stored channels-last, BNs kept / folded), conv.json (cuDNN against mmlrf's CPU conv routes, 1x1
# as matrix products, on this GPU), compiled_train.{json,png} (8x512x512 training steps, eager and
# under torch.compile).
# SUITE_STEPS="name ..." runs only the named steps (the others are logged as not selected), e.g.
# SUITE_STEPS="graph_tests tf32_wscap" for a short rerun.
# TF32 is off (fp32 parity) except in tf32_convs, tf32_wscap, tf32_cap, memory_tf32 and
# tf32_plain; bf16 rows use autocast (models) / bf16 tensors (ops).
set -uo pipefail
cd "$(dirname "$0")/../.."
SITE_PKGS=(addict ftfy importlib_metadata lazy_importer mmcv mmengine mmpretrain mmseg modelindex
           ordered_set platformdirs prettytable termcolor wcwidth yapf yapf_third_party)

if [[ "${1:-}" == "--prepare" ]]; then
    if ! src=$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])'); then
        echo "--prepare needs .venv (README: python3.11 -m venv .venv, then step 1 in it)" >&2
        exit 1
    fi
    rm -rf .gpu_site && mkdir -p .gpu_site
    for p in "${SITE_PKGS[@]}"; do
        if ! cp -r "$src/$p" .gpu_site/; then
            echo "--prepare: $p is not installed in .venv" >&2
            exit 1
        fi
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

STEPS=(kernel_tests graph_tests dynamics train_interleaved issue5 tf32_convs tf32_wscap tf32_cap
       memory_tf32 tf32_plain fused compiled profile profile_fused profile_train_official
       profile_train_lrf_dyn channels_last conv compiled_train)
# (every step below, in order; SUITE_STEPS is checked against it)
for name in ${SUITE_STEPS:-}; do
    if [[ " ${STEPS[*]} " != *" $name "* ]]; then
        echo "SUITE_STEPS: unknown step '$name'; the steps are: ${STEPS[*]}" >&2
        exit 2
    fi
done
OUT=${OUT:-work_dirs/gpu_suite}
mkdir -p "$OUT"
LOG="$OUT/suite.log"
RAW=$(mktemp -d)  # the steps' files, packed into $OUT/suite.tgz
trap 'rm -rf "$RAW"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/.gpu_site${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
MODEL=configs/_base_/models/fpn_sdtv3.py
if [[ "${1:-}" == "--smoke" ]]; then
    PY=${PYTHON:-.venv/bin/python}
    ARGS=(--smoke --device cpu --warmup 1 --repeats 1)
    LIMIT=600 SMOKE=1 RES_FAST=64x128 RES_TRAIN=64x64 BATCH_TRAIN=1 DEVICE=cpu GRAPH=()
    CONV_REPEATS=1 CAP=() TRAIN_REPEATS=2  # no memory cap on the CPU
    MODEL=configs/toy/fpn_sdtv3-tiny-lrfdyn_1xb8-600it_toy-64x64.py
else
    ARGS=(--device cuda --warmup 2 --repeats 5)
    LIMIT=95 SMOKE='' RES_FAST=1024x2048 RES_TRAIN=512x512 BATCH_TRAIN=8 DEVICE=cuda
    GRAPH=(--cuda-graph) CONV_REPEATS=5 CAP=(--memory-cap-mib "${CAP_MIB:-1192}")
    TRAIN_REPEATS=15
fi
BUDGET=${SUITE_BUDGET:-$([[ -n "${SMOKE}" ]] && echo 3600 || echo 540)}
START=$SECONDS

pack() {  # every file the finished steps wrote, into $OUT/suite.tgz (replaced whole)
    tar czf "$OUT/suite.tgz.part" -C "$RAW" . && mv "$OUT/suite.tgz.part" "$OUT/suite.tgz"
}

step() {  # step NAME LIMIT_S CMD...: CMD under min(LIMIT_S, budget left), or SKIPPED
    local name=$1 limit=$2 left=$((BUDGET - (SECONDS - START)))
    shift 2
    pack
    if [[ -n "${SUITE_STEPS:-}" && " ${SUITE_STEPS} " != *" $name "* ]]; then
        echo "== ${name}: not selected (SUITE_STEPS)"
        return 0
    fi
    ((left < limit)) && limit=$left
    if ((limit < 10)); then
        echo "== ${name}: SKIPPED (suite budget of ${BUDGET} s spent)"
        return 0
    fi
    echo "== ${name} (at most ${limit} s)"
    timeout "$limit" "$@"
}

{
    date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
    $PY -c "import torch, mmlrf, mmseg, mmengine; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), 'mmseg', mmseg.__version__, 'mmengine', mmengine.__version__)" || exit 1
    if [[ -z "${SMOKE}" ]]; then
        # the Triton kernels' correctness on this GPU first (forward and gradients vs float64
        # FFT); their whole log is packed even if the step runs out of time
        step kernel_tests 100 $PY -m pytest tests/test_dynamics_fast.py tests/test_analysis.py \
            -q -k "triton or cuda" -p no:cacheprovider --durations=8 2>&1 \
            | tee "$RAW/kernel_tests.log" | tail -14
        # the CUDA-graph replay against eager inference, and lean inference (row strips)
        # against plain, synchronous launches; -rP: the lean tests print how far they were
        step graph_tests 60 env CUDA_LAUNCH_BLOCKING=1 $PY -m pytest tests/test_cuda_graph.py \
            tests/test_lean_inference_devices.py -q -rP -p no:cacheprovider 2>&1 \
            | tee "$RAW/graph_tests.log" | grep -E "max \|lean|passed|failed|Error" | tail -20
    fi
    # the dendritic operator alone: floor, triton / scan / fft, fp32 and bf16
    step dynamics 65 $PY tools/analysis/bench_dynamics_gpu.py ${SMOKE:+--smoke} --budget 45 \
        --out "$RAW/dynamics.json" | grep -v Warning
    # the training step, official and LRF-Dyn round-robin (the target "no slower than the
    # official attention" compares their medians; gc_ms: the collector's pauses per step)
    step train_interleaved $LIMIT $PY tools/analysis/benchmark.py --config "$MODEL" \
        --variants official lrf_dyn --resolution ${RES_TRAIN} --batch ${BATCH_TRAIN} \
        --modes train "${ARGS[@]}" --warmup 3 --repeats ${TRAIN_REPEATS} --interleave \
        --out "$RAW/train_interleaved"
    # issue 5 targets (TF32 off: fp32 as the parity check needs it)
    step issue5 $LIMIT $PY tools/analysis/benchmark.py --preset issue5 "${ARGS[@]}" \
        --out "$RAW/issue5"
    # PyTorch's default GPU precision: TF32 in cuDNN convolutions only; then the same with
    # cuDNN's workspace capped (with TF32 the LRF-Dyn peak rose by 393 MiB, the official's not)
    step tf32_convs $((LIMIT / 2)) $PY tools/analysis/benchmark.py --config "$MODEL" \
        --variants official lrf_dyn --resolution ${RES_FAST} --modes infer "${ARGS[@]}" \
        --fuse-conv-bn --tf32 convs --out "$RAW/tf32_convs"
    step tf32_wscap $((LIMIT / 2)) env CUDNN_CONV_WSCAP_DBG=${WSCAP_MIB:-64} \
        $PY tools/analysis/benchmark.py --config "$MODEL" \
        --variants official lrf_dyn --resolution ${RES_FAST} --modes infer "${ARGS[@]}" \
        --fuse-conv-bn --tf32 convs --out "$RAW/tf32_wscap"
    # LRF-Dyn's, again under a memory cap of the target: the speed of what fits in 1.25 GB
    step tf32_cap $((LIMIT / 2)) $PY tools/analysis/benchmark.py --config "$MODEL" \
        --variants lrf_dyn --resolution ${RES_FAST} --modes infer "${ARGS[@]}" \
        --fuse-conv-bn --tf32 convs "${CAP[@]}" --out "$RAW/tf32_cap"
    # which module's call holds the TF32 peak (live memory + its transient, workspaces included)
    step memory_tf32 $((LIMIT / 3)) $PY tools/analysis/module_memory.py "$MODEL" \
        --variant lrf_dyn --resolution ${RES_FAST} --device ${DEVICE} --fuse-conv-bn \
        --tf32 convs --out "$RAW/memory_tf32" | grep -v Warning
    # lean inference (row strips, released maps; on in the configs) against plain, same run
    step tf32_plain $((LIMIT / 2)) $PY tools/analysis/benchmark.py --config "$MODEL" \
        --variants lrf_dyn --resolution ${RES_FAST} --modes infer "${ARGS[@]}" \
        --fuse-conv-bn --tf32 convs --plain-inference --out "$RAW/tf32_plain"
    # whole-model inference with every BN folded into its conv (tools/test.py --fuse-conv-bn)
    # and (GPU) replayed as one CUDA graph, every combination in one run
    step fused $LIMIT $PY tools/analysis/benchmark.py --config "$MODEL" \
        --variants official lrf_dyn --resolution ${RES_FAST} --modes infer "${ARGS[@]}" \
        --fuse-conv-bn "${GRAPH[@]}" --out "$RAW/fused"
    # LRF-Dyn under torch.compile (inductor can fuse the eval BNs, neurons and residual adds
    # into single elementwise kernels), its eager twin in the same run
    step compiled $((LIMIT * 2)) $PY tools/analysis/benchmark.py --config "$MODEL" \
        --variants lrf_dyn --resolution ${RES_FAST} --modes infer "${ARGS[@]}" --compile \
        --out "$RAW/compiled"
    # where the inference time goes (per leaf-module type and operator), unfused and fused
    for fused in "" "--fuse-conv-bn"; do
        step profile${fused:+_fused} $((LIMIT / 3)) \
            $PY tools/analysis/profile_model.py "$MODEL" --variant lrf_dyn \
            --resolution ${RES_FAST} --device ${DEVICE} --iterations 3 --warmup 2 ${fused} \
            --out "$RAW/profile${fused:+_fused}" | grep -v Warning
    done
    # where a training step's time goes (forward per leaf module, backward per autograd node,
    # CUDA kernels), for the target "no slower than the official attention"
    for variant in official lrf_dyn; do
        step profile_train_${variant} $((LIMIT / 2)) \
            $PY tools/analysis/profile_model.py "$MODEL" --variant ${variant} --mode train \
            --resolution ${RES_TRAIN} --batch ${BATCH_TRAIN} --device ${DEVICE} --iterations 3 \
            --warmup 2 --out "$RAW/profile_train_${variant}" | grep -v Warning
    done
    # the weights stored channels-last (tools/test.py --channels-last; on the CPU it lowers
    # the inference peak by a quarter), BNs kept / folded, eager
    step channels_last $((LIMIT / 2)) $PY tools/analysis/benchmark.py --config "$MODEL" \
        --variants official lrf_dyn --resolution ${RES_FAST} --modes infer "${ARGS[@]}" \
        --fuse-conv-bn --channels-last --out "$RAW/channels_last"
    # would the CPU conv routes (1x1 as matrix products, depth-wise backward as forward convs)
    # beat cuDNN here? The models take them on the CPU only.
    step conv 60 $PY tools/analysis/bench_conv.py --device ${DEVICE} --repeats ${CONV_REPEATS} \
        --out "$RAW/conv.json" | grep -v Warning
    # training under torch.compile (forward + loss, backward by AOTAutograd) against eager, both
    # attentions; last: it compiles two training graphs (minutes), and runs when time is left
    step compiled_train $((LIMIT * 2)) $PY tools/analysis/benchmark.py --config "$MODEL" \
        --variants official lrf_dyn --resolution ${RES_TRAIN} --batch ${BATCH_TRAIN} \
        --modes train "${ARGS[@]}" --compile --out "$RAW/compiled_train"
    pack
    date -u
} 2>&1 | tee "$LOG"
