#!/usr/bin/env bash
# Experiment mode on ../shared/data plus demo healthy scans (see pipelines/real_experiment.yaml).
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

import nibabel as nib
from nibabel.processing import resample_to_output

from custom_components.data.atomic import save_nifti

inputs = Path(sys.argv[1]).resolve()
real = read_datalist(inputs / "real_train.json")
# "small size": the real case resampled to 2 mm (linear for images, nearest for labels)
items = []
for item in real["training"]:
    out = dict(item)
    for key, order in (("image", 1), ("label", 0)):
        files = item[key] if isinstance(item[key], list) else [item[key]]
        new = []
        for f in files:
            img = resample_to_output(nib.load(f), voxel_sizes=2.0, order=order)
            dst = inputs / "real_2mm" / Path(f).name
            data = img.get_fdata()
            save_nifti(data.round() if order == 0 else data, img.affine, dst, dtype="uint8" if order == 0 else "float32")
            new.append(str(dst))
        out[key] = new if isinstance(item[key], list) else new[0]
    items.append(out)
# one real case only: it is both the training and the evaluation case
# (the evaluation copy gets its own case id, since ids are unique across sections)
evaluation = [{**i, "case_id": f"{i['case_id']}-eval"} for i in items]
write_datalist(inputs / "real.json", {**real, "training": items, "validation": evaluation})
healthy = read_datalist(inputs / "healthy_real.json")
demo = read_datalist(inputs / "demo" / "healthy" / "datalist.json")
write_datalist(inputs / "healthy.json", {**healthy, "training": healthy["training"] + demo["training"]})
PY
$PY -m custom_components validate-datalist "$IN/real.json"
$PY -m custom_components pipeline --config pipelines/real_experiment.yaml
