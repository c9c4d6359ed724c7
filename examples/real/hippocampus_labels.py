"""Write the labels CSV for the MSD Task04 Hippocampus study (docs/results.md).

    python examples/real/hippocampus_labels.py ../shared/data/msd_hippocampus_mr labels.csv

Columns: ``image`` (file name in images/), ``mask`` (absolute path of its label volume: 1 anterior,
2 posterior), ``volume_class`` — the pretraining task of the self-pretrained source: whether the
labelled hippocampus (anterior + posterior voxels, at 1 mm³) is ``large`` (above the cohort median)
or ``small``. Hippocampal volume is the atrophy marker this data set was collected around; as a
pretext it makes the encoder look at the structure the target task segments, without being that task.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def main(root: str, out: str) -> None:
    root_path = Path(root).resolve()
    names = sorted(p.name for p in (root_path / "images").glob("hippocampus_*.nii.gz"))
    voxels = {n: int(np.count_nonzero(np.asarray(nib.load(root_path / "labels" / n).dataobj))) for n in names}
    median = float(np.median(list(voxels.values())))
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "mask", "volume_class"])
        for n in names:
            writer.writerow([n, str(root_path / "labels" / n), "large" if voxels[n] > median else "small"])
    print(f"{out}: {len(names)} volumes, median hippocampus {median:.0f} voxels")


if __name__ == "__main__":
    main(*sys.argv[1:3])
