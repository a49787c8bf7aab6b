#!/usr/bin/env bash
# Experiment mode on ../shared/data plus demo healthy scans (see ci/pipelines/real_experiment.yaml).
# Usage: bash ci/real_experiment.sh   (after `make setup`; writes real_experiment_output/)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=../shared/data
IN=real_experiment_output/inputs
PY=.venv/bin/python
[ -d "$SHARED/tumor" ] || { echo "real MRI not found at $SHARED (../shared/data)"; exit 1; }
mkdir -p "$IN"
# the real case (2023 file names, BraTS 2021 label values 1, 2, 4)
$PY -m custom_components make-datalist "$SHARED/tumor" --out "$IN/real_train.json" --modalities t1n --labels brats2021
# healthy scans: the two real T1 brains plus two demo subjects (MNI152 variants)
$PY -m custom_components make-datalist "$SHARED/healthy" --out "$IN/healthy_real.json" --kind healthy
$PY -m custom_components demo-data --out "$IN/demo" --n_healthy 2 --n_tumour 2 --spacing 2.0
$PY - "$IN" <<'PY'
import sys
from pathlib import Path

from custom_components.data.datalist import read_datalist, write_datalist

inputs = Path(sys.argv[1])
real = read_datalist(inputs / "real_train.json")
# one real case only: it is both the training and the evaluation case
write_datalist(inputs / "real.json", {**real, "validation": list(real["training"])})
healthy = read_datalist(inputs / "healthy_real.json")
demo = read_datalist(inputs / "demo" / "healthy" / "datalist.json")
write_datalist(inputs / "healthy.json", {**healthy, "training": healthy["training"] + demo["training"]})
PY
$PY -m custom_components validate-datalist "$IN/real.json"
$PY -m custom_components pipeline --config ci/pipelines/real_experiment.yaml
