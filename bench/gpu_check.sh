#!/usr/bin/env bash
# One GPU check for the lent GPU machine (issue 26, item 4), in under 8 minutes, one summary at the end.
#
#   bash bench/gpu_check.sh            # from anywhere; it runs in the repository root
#
# Parts (each under `timeout`; a failed part is reported and the next one runs):
#   env        nvidia-smi -L, torch / CUDA / cuDNN versions, what torch sees (bf16 support)
#   data       CIFAR-10 found through prunelab's search path ($PRUNELAB_DATA, shared/datasets inside or
#              beside the repository, the user cache) and decoded once; without it the parts that
#              train on real images are skipped (the rest, synthetic, still run)
#   tests-cuda   the test that runs on CUDA explicitly (tests/test_counting_torch.py -k cuda)
#   tests-trainer  tests/test_trainer.py -k "real_data or sigkill or ddp": with CUDA present the trainer
#              picks it, so these train with AMP (bf16) and channels-last and check exact resume after
#              SIGKILL on the GPU; the DDP tests are the 2-process CPU (gloo) ones, run on a CUDA host
#              (prunelab.train.distributed.init_from_env picks NCCL and cuda:LOCAL_RANK whenever CUDA is
#              present, also for this CPU training: they may fail here until it follows the training device)
#   tests-pipeline  tests/test_pipeline.py: every method's pipeline (ci scale) on CUDA, exact resume
#   ddp        with >= 2 GPUs: torchrun on 2 GPUs (NCCL) of bench/paper_throughput.py (synthetic data,
#              resnet56 and ManiDP through the shared Trainer) and, with CIFAR-10, the README's DDP
#              command at ci scale; with 1 GPU: "DDP skipped: 1 GPU"
#   throughput  bench/paper_throughput.py --device cuda: every config's paper-scale stages, images/s
#              and projected hours per run (an estimate from synthetic-data throughput)
# Tests run with PRUNELAB_SCALE=ci. The whole check stops at $GPU_CHECK_BUDGET_S seconds (default 450):
# each part's limit is cut so that the throughput part keeps at least $GPU_CHECK_THROUGHPUT_MIN_S (150).
#
# Reading the summary: part, status (ok / failed / skipped), seconds, and why for a failed or skipped
# part; then the throughput table. Logs (one per part) and throughput.json go to $GPU_CHECK_OUT, else
# $OUT (the folder the lent machine sends back), else a temporary folder; the summary names it.
#
# Exit status: 0 every part ok or skipped; 1 a part failed; 2 no CUDA device (nothing was run: the
# message "no CUDA device: run this on the lent GPU machine", one line). 2 rather than 0 so that a run
# on the wrong machine is never mistaken for a passed check.
#
# Python: $PYTHON, else .venv/bin/python, else python3. Nothing is downloaded or installed.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}  # tests point it at a missing file to check the no-GPU message
if ! command -v "$NVIDIA_SMI" >/dev/null 2>&1 || ! "$NVIDIA_SMI" -L >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device: run this on the lent GPU machine" >&2
    exit 2
fi

PY=${PYTHON:-.venv/bin/python}
if ! [ -x "$PY" ]; then PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this tree's prunelab, also for a python3 without it installed
BUDGET=${GPU_CHECK_BUDGET_S:-450}  # + up to 10 s for the last part's kill: under 8 minutes
TP_MIN=${GPU_CHECK_THROUGHPUT_MIN_S:-150}
LOGS=${GPU_CHECK_OUT:-${OUT:-}}
if [ -z "$LOGS" ]; then LOGS=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX"); fi
mkdir -p "$LOGS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_runs.XXXXXX")  # scripts and run directories, not sent back
trap 'rm -rf "$WORK"' EXIT
# a dry run of this script's own logic on a machine without a GPU: GPU_CHECK_DEVICE=cpu NVIDIA_SMI=<fake>
DEVICE=${GPU_CHECK_DEVICE:-cuda}
read -r -a TP_ARGS <<<"${GPU_CHECK_THROUGHPUT_ARGS:-}"  # e.g. "--steps 10": passed to paper_throughput.py
SKIP=${GPU_CHECK_SKIP:-}  # comma-separated parts not to run, e.g. tests-pipeline (a rerun of the rest)
export PRUNELAB_SCALE=ci
T0=$SECONDS

NAMES=() STATUS=() SECS=() NOTES=() RAN=()  # RAN: the logs written by this run (not an earlier one's)
record() { NAMES+=("$1"); STATUS+=("$2"); SECS+=("$3"); NOTES+=("$4"); }

# run_part NAME LIMIT RESERVE CMD...: CMD under `timeout`, output shown and kept in $LOGS/NAME.log.
# The limit is cut to what the budget leaves after RESERVE seconds kept for later parts.
# Exit status 3 from CMD means "skipped" (the reason is its last output line).
run_part() {
    local name=$1 limit=$2 reserve=$3
    shift 3
    if [[ ",$SKIP," == *",$name,"* ]]; then
        record "$name" skipped 0 "in GPU_CHECK_SKIP"
        return
    fi
    local left=$((BUDGET - (SECONDS - T0) - reserve))
    if ((left < limit)); then limit=$left; fi
    if ((limit < 10)); then
        record "$name" skipped 0 "no time left in the ${BUDGET}s budget"
        return
    fi
    echo
    echo "== $name (limit ${limit}s): $(printf '%q ' "$@")"
    local t=$SECONDS rc
    RAN+=("$LOGS/$name.log")
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    local dt=$((SECONDS - t))
    case $rc in
        0) record "$name" ok "$dt" "" ;;
        3) record "$name" skipped "$dt" "$(tail -n 1 "$LOGS/$name.log")" ;;
        124 | 137) record "$name" failed "$dt" "timed out after ${limit}s" ;;
        *) record "$name" failed "$dt" "exit $rc: $(grep -v '^[[:space:]]*$' "$LOGS/$name.log" | tail -n 1 | cut -c1-100)"
           ;;
    esac
}
skip() { record "$1" skipped 0 "$2"; }

# -- env --------------------------------------------------------------------------------------------
GPUS=$("$NVIDIA_SMI" -L | grep -c '^GPU')
cat >"$WORK/env.py" <<'EOF'
import subprocess, sys
subprocess.run([sys.argv[1], "-L"], check=True)
import torch
print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda,
      '| cuDNN', torch.backends.cudnn.version())
if not torch.cuda.is_available():
    sys.exit('torch sees no CUDA device (a CPU-only torch build?)' if sys.argv[2] == 'cuda' else 0)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f'cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}')
print('bf16 supported:', torch.cuda.is_bf16_supported())
EOF
run_part env 60 "$TP_MIN" "$PY" "$WORK/env.py" "$NVIDIA_SMI" "$DEVICE"
CUDA_OK=1
if [ "${STATUS[-1]}" != ok ]; then CUDA_OK=0; fi

# -- data -------------------------------------------------------------------------------------------
cat >"$WORK/data.py" <<'EOF'
import sys
from prunelab.errors import DataError
from prunelab.data.cifar import load_cifar10, search_path
try:
    ds = load_cifar10()
except DataError as e:
    print(str(e).splitlines()[0][:200])
    print("CIFAR-10 not found (searched " + ", ".join(map(str, search_path())) + "); set PRUNELAB_DATA")
    sys.exit(3)
print(f"CIFAR-10: {len(ds.train_labels)} training and {len(ds.test_labels)} test images")
EOF
run_part data 90 "$TP_MIN" "$PY" "$WORK/data.py"
DATA_OK=0
if [ "${STATUS[-1]}" = ok ]; then DATA_OK=1; fi

# -- tests ------------------------------------------------------------------------------------------
# -v: a part cut off by its time limit still shows which tests passed; --maxfail, not -x: the failures of a
# part all show in one (scarce) GPU run
PYTEST=("$PY" -m pytest -v -p no:cacheprovider -rfE --maxfail=5)
if ((CUDA_OK)); then
    run_part tests-cuda 60 "$TP_MIN" "${PYTEST[@]}" tests/test_counting_torch.py -k cuda
    if ((DATA_OK)); then
        run_part tests-trainer 120 "$TP_MIN" "${PYTEST[@]}" tests/test_trainer.py -k "real_data or sigkill or ddp"
        run_part tests-pipeline 180 "$TP_MIN" "${PYTEST[@]}" tests/test_pipeline.py
    else
        skip tests-trainer "no CIFAR-10 (see data)"
        skip tests-pipeline "no CIFAR-10 (see data)"
    fi
else
    for p in tests-cuda tests-trainer tests-pipeline; do skip "$p" "torch sees no CUDA (see env)"; done
fi

# -- DDP on 2 GPUs ----------------------------------------------------------------------------------
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node 2)
if ((CUDA_OK && GPUS >= 2)); then
    run_part ddp-synthetic 90 "$TP_MIN" "${TORCHRUN[@]}" bench/paper_throughput.py --device "$DEVICE" \
        --only resnet56,resnet20_manidp --steps 10 --warmup 3 --eval-steps 2
    if ((DATA_OK)); then
        # the README's command (train resnet56 --scale paper), at ci scale so that it ends in seconds
        run_part ddp-cli 90 "$TP_MIN" "${TORCHRUN[@]}" -m prunelab.cli train resnet20 --scale ci \
            --out "$WORK/ddp" --set train.progress=false
    else
        skip ddp-cli "no CIFAR-10 (see data)"
    fi
elif ((CUDA_OK)); then
    skip ddp "DDP skipped: $GPUS GPU"
    echo
    echo "DDP skipped: $GPUS GPU"
else
    skip ddp "torch sees no CUDA (see env)"
fi

# -- throughput -------------------------------------------------------------------------------------
if ((CUDA_OK)); then
    run_part throughput 300 0 "$PY" bench/paper_throughput.py --device "$DEVICE" --json "$LOGS/throughput.json" \
        "${TP_ARGS[@]}"
else
    skip throughput "torch sees no CUDA (see env)"
fi

# -- summary ----------------------------------------------------------------------------------------
echo
echo "== gpu_check summary ($GPUS GPU(s), $((SECONDS - T0))s in all; logs in $LOGS) =="
printf '%-15s %-8s %6s  %s\n' part status seconds note
FAILED=0
for i in "${!NAMES[@]}"; do
    printf '%-15s %-8s %6s  %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
    if [ "${STATUS[$i]}" = failed ]; then FAILED=1; fi
done
# the failing tests and stages by name (pytest's -rfE lines, paper_throughput's FAILED rows)
FAILS=$(cat "${RAN[@]}" /dev/null 2>/dev/null | grep -E '^(FAILED|ERROR) |  FAILED: ' | sort -u | head -n 20)
if [ -n "$FAILS" ]; then
    echo
    echo "failures:"
    echo "$FAILS"
fi
for part in ddp-synthetic throughput; do
    log="$LOGS/$part.log"
    if ! [[ " ${RAN[*]} " == *" $log "* && -f "$log" ]]; then continue; fi
    echo
    if grep -q '^== throughput table' "$log"; then
        echo "$part:"
        sed -n '/^== throughput table/,$p' "$log"
    else  # cut short: the rows it printed as it went
        echo "$part (incomplete: the rows timed before it stopped):"
        grep -E '^  ' "$log"
    fi
done
exit $FAILED
