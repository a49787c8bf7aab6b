#!/usr/bin/env bash
# First check on a CUDA machine, in under 5 minutes: one short training of each bundle on the GPU (dtss_mas_seg
# two-phase DTSS + MAS, tf_aug, tf_gan; tf_aug's synthesis of two coarse cases runs between the last two because
# tf_gan trains on them) on demo data made here, then the absolute throughput figures of dtss_mas_seg's phase 2
# (benchmarks/bench_train_throughput.py on BraTS-size volumes, every arm) in what is left of the budget.
#
# Usage: bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--device cuda:0] [--budget SECONDS]
#                                     [--num-workers "4"] [--iterations 6] [--python PYTHON]
#   --dry-run      print every command without running it (exit 0; no GPU needed)
#   --out          output folder (default gpu_check_output): throughput.json, logs/, summary.txt, the runs
#   --device       torch device of every step (default cuda:0)
#   --budget       seconds for all steps together (default 290); each step gets what is left, a step that
#                  runs out is stopped and reported, the remaining steps are skipped
#   --num-workers  DataLoader workers compared by the benchmark (default "4"; e.g. "0 4 8")
#   --iterations   phase-2 iterations per benchmark run (default 6)
#   --bench-args   extra arguments for the benchmark, after the defaults (e.g. "--size 48 48 48 --crop 32")
#   --python       interpreter (default: .venv/bin/python of the repository, else python3)
# With --device cpu nothing needs CUDA (a slow smoke test of this script, far beyond the budget at BraTS size).
# Exit status: 0 when every step passed within the budget; 1 when a step failed or ran out of time;
# 2 when CUDA is not available (unless --dry-run).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="gpu_check_output"
DEVICE="cuda:0"
BUDGET=290
NUM_WORKERS="4"
ITERATIONS=4
BENCH_ARGS=""
DRY_RUN=0
PYTHON=""
if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="python3"; fi

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --num-workers) NUM_WORKERS="$2"; shift 2 ;;
    --iterations) ITERATIONS="$2"; shift 2 ;;
    --bench-args) BENCH_ARGS="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

OUT="$(realpath -m "$OUT")"
LOGS="$OUT/logs"
DEMO="$OUT/demo"
SEG="$DEVICE"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
FAILED=0
CHAIN_FAILED=0
if [[ $DRY_RUN -eq 0 ]]; then mkdir -p "$OUT"; : > "$OUT/summary.txt"; fi

# write a bundle overrides file (JSON); in a dry run print it instead
overrides() {  # overrides NAME JSON
  local file="$OUT/overrides/$1.json"
  if [[ $DRY_RUN -eq 1 ]]; then
    echo "# $file: $2"
  else
    mkdir -p "$OUT/overrides"
    printf '%s\n' "$2" > "$file"
  fi
}

# the argv of `python -m monai.bundle run` on bundles/BUNDLE with configs/<CONFIG>... and an overrides file
bundle_cmd() {  # bundle_cmd BUNDLE RUN_ID OVERRIDES_NAME CONFIG...
  local bundle="$1" run_id="$2" name="$3"; shift 3
  local root="$REPO/bundles/$bundle" files="" c
  for c in "$@"; do files+="'$root/configs/$c',"; done
  files+="'$OUT/overrides/$name.json'"
  CMD=("$PYTHON" -m monai.bundle run "$run_id" --config_file "[$files]" --meta_file "$root/configs/metadata.json"
       --logging_file "$root/configs/logging.conf" --bundle_root "$root")
}

# run one step within what is left of the budget (and at most CAP seconds, "-": no cap of its own), logging to
# logs/NAME.log and timing it; a step of the bundle chain (CHAIN=1) is skipped once an earlier one failed
step() {  # step NAME CAP CHAIN CMD...
  local name="$1" cap="$2" chain="$3"; shift 3
  if [[ $DRY_RUN -eq 1 ]]; then
    printf '[%s] %s\n' "$name" "$(printf '%q ' "$@")"
    return 0
  fi
  local now left t0 rc
  now=$(date +%s); left=$((BUDGET - (now - START)))
  if [[ "$cap" != "-" && $cap -lt $left ]]; then left=$cap; fi
  if [[ $left -le 0 || ($chain -eq 1 && $CHAIN_FAILED -ne 0) ]]; then
    echo "$name: SKIPPED (the ${BUDGET} s budget is spent or an earlier step it needs failed)" | tee -a "$OUT/summary.txt"
    FAILED=1
    return 0
  fi
  mkdir -p "$LOGS"
  t0=$(date +%s)
  echo "[$name] running (${left} s left of the budget) ..."
  set +e
  timeout --signal=TERM --kill-after=10 "$left" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  set -e
  local took=$(($(date +%s) - t0))
  if [[ $rc -eq 0 ]]; then
    echo "$name: ok, ${took} s" | tee -a "$OUT/summary.txt"
  else
    [[ $rc -eq 124 ]] && why="ran out of the budget" || why="exit $rc"
    echo "$name: FAILED ($why) after ${took} s; log: $LOGS/$name.log" | tee -a "$OUT/summary.txt"
    tail -n 30 "$LOGS/$name.log" >&2 || true
    FAILED=1
    [[ $chain -eq 0 ]] || CHAIN_FAILED=1
  fi
}

if [[ $DRY_RUN -eq 0 && "$DEVICE" == cuda* ]]; then
  if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: CUDA is not available to $PYTHON (torch $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?')); nothing run. Use --dry-run to see the commands." >&2
    exit 2
  fi
  { command -v nvidia-smi > /dev/null && nvidia-smi; "$PYTHON" -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('monai', monai.__version__)"; nproc; } > "$OUT/machine.txt" 2>&1 || true
fi
echo "gpu_check: device $DEVICE, budget ${BUDGET} s, output $OUT"

# 1. demo data (phantom tumours, MNI152 healthy scans, 2 mm grid) and healthy scans prepared into its space
[[ $DRY_RUN -eq 1 ]] || rm -rf "$DEMO"  # demo-data refuses to overwrite an earlier run's data
step demo_data - 1 "$PYTHON" -m custom_components demo-data --out "$DEMO" --n_healthy 1 --n_tumour 3 --spacing 2.0 --seed 0
step prepare_healthy - 1 "$PYTHON" -m custom_components prepare-healthy --healthy "$DEMO/healthy/datalist.json" \
  --reference "$DEMO/tumour/datalist.json" --out "$OUT/prepared" --qc False --overwrite True

# 2. dtss_mas_seg: one phase-1 epoch, then one phase-2 epoch with DTSS + MAS (its model is TF's encoder F)
overrides seg "{\"datalist\": \"$DEMO/tumour/datalist.json\", \"output_dir\": \"$OUT/seg\", \"modalities\": [\"t1n\"],
  \"filters\": [8, 16, 32, 64], \"crop_size\": [64, 64, 64], \"batch_size\": 2, \"num_workers\": 2,
  \"device\": \"$SEG\", \"max_epochs\": 2, \"phase2_start_epoch\": 1, \"val_interval\": 2, \"overwrite\": true}"
bundle_cmd dtss_mas_seg training seg common.yaml train.yaml
step dtss_mas_seg_train - 1 "${CMD[@]}"

# 3. tf_aug: learn the class-wise intensities through F (2 epochs), then fabricate 2 coarse cases
TF_AUG="\"healthy_datalist\": \"$OUT/prepared/datalist.json\", \"real_datalist\": \"$DEMO/tumour/datalist.json\",
  \"modalities\": [\"t1n\"], \"encoder_checkpoint\": \"$OUT/seg/models/model.pt\", \"encoder_filters\": [8, 16, 32, 64],
  \"output_dir\": \"$OUT/tf_aug\", \"device\": \"$SEG\", \"num_workers\": 2, \"crop_size\": [64, 64, 64]"
overrides tf_aug_train "{$TF_AUG, \"max_epochs\": 2, \"pairs_per_epoch\": 2, \"overwrite\": true}"
bundle_cmd tf_aug training tf_aug_train common.yaml train.yaml
step tf_aug_train - 1 "${CMD[@]}"
overrides tf_aug_synthesise "{$TF_AUG, \"num_cases\": 2, \"qc_cases\": 1, \"overwrite\": true}"
bundle_cmd tf_aug run tf_aug_synthesise common.yaml inference.yaml
step tf_aug_synthesise - 1 "${CMD[@]}"

# 4. tf_gan: 2 epochs of 2 iterations of adversarial refinement on the coarse cases (64^3 patches)
overrides tf_gan_train "{\"coarse_datalist\": \"$OUT/tf_aug/coarse/datalist.json\",
  \"real_datalist\": \"$DEMO/tumour/datalist.json\", \"modalities\": [\"t1n\"], \"output_dir\": \"$OUT/tf_gan\",
  \"encoder_checkpoint\": \"$OUT/seg/models/model.pt\", \"encoder_filters\": [8, 16, 32, 64],
  \"patch_size\": [64, 64, 64], \"gen_channels\": [8, 8, 8, 8, 8, 8], \"disc_channels\": [8, 8, 8, 8, 8],
  \"max_epochs\": 2, \"epoch_length\": 2, \"device\": \"$SEG\", \"num_workers\": 2, \"overwrite\": true}"
bundle_cmd tf_gan training tf_gan_train common.yaml train.yaml
step tf_gan_train - 1 "${CMD[@]}"

# 5. throughput of phase 2 per arm on BraTS-size volumes (the real case when ../shared/data has it, else phantoms),
# last, with what is left of the budget (the JSON keeps the runs finished by then)
# shellcheck disable=SC2086  # NUM_WORKERS and BENCH_ARGS are word lists
step throughput - 0 "$PYTHON" "$REPO/benchmarks/bench_train_throughput.py" --device "$DEVICE" \
  --arms baseline dtss dtss_mas carvemix tf --num-workers $NUM_WORKERS --iterations "$ITERATIONS" \
  --size 240 240 155 --crop 128 --cases 4 --synthesis-samples 2 --timeout 90 --workdir "$OUT/throughput" \
  --json "$OUT/throughput.json" $BENCH_ARGS

if [[ $DRY_RUN -eq 1 ]]; then
  exit 0
fi
TOTAL=$(($(date +%s) - START))
echo "total: ${TOTAL} s of a ${BUDGET} s budget" | tee -a "$OUT/summary.txt"
if [[ $FAILED -ne 0 ]]; then
  echo "gpu_check: FAILED (see $OUT/summary.txt and $LOGS)" >&2
  exit 1
fi
echo "gpu_check: every step passed; figures in $OUT/throughput.json and $LOGS/throughput.log"
