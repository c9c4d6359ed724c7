"""Does a run's Grad-CAM agree with occlusion sensitivity? A sanity check for docs/results.md.

For the test images of one classification run (a study cell and fold, localization masks from the
study's data section), it compares

* occluding the lesion mask vs occluding the same-size region mirrored top-to-bottom: the mean
  absolute change of the positive-class log-odds (does the model use the lesion?), and
* Grad-CAM (`medxfer.explain.gradcam.gradcam_maps`) against an 8 × 8 occlusion map (16 % patches
  set to the image mean): the mean Pearson correlation per image, also for the map flipped and
  transposed (an orientation bug would show as a higher correlation there).

Run in the study's work folder with its MLFLOW_TRACKING_URI / MEDXFER_HOME, e.g.
  python scripts/checks/gradcam_vs_occlusion.py busi-cls-reduced \
      classification/mobilenet_v1_025/imagenet/none/lr0.001 --fold 0 \
      --manifest cohorts/busi/manifest.csv --mask-root data/busi --classes benign,malignant
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("cell")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--label", default="label")
    ap.add_argument("--classes", required=True, help="comma-separated, positive class last")
    ap.add_argument("--mask-root", required=True)
    ap.add_argument("--images", type=int, default=60, help="test images to use (first N)")
    args = ap.parse_args()

    import mlflow

    from medxfer.engine import load_cohort
    from medxfer.engine.predict import load_run_model
    from medxfer.explain.gradcam import gradcam_maps
    from medxfer.transforms.pipelines import localization_transforms

    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name(f"medxfer/{args.study}")
    runs = client.search_runs([exp.experiment_id], f"tags.cell = '{args.cell}' and tags.fold = '{args.fold}' "
                              "and attributes.status = 'FINISHED'")
    run = load_run_model(runs[0].info.run_id)
    model = run.network.eval()
    size, channels = int(run.config["image_size"]), int(run.config["in_channels"])
    cohort = load_cohort(args.manifest, args.label, fold=args.fold, classes=args.classes.split(","),
                         localization=True, mask_root=args.mask_root)
    transforms = localization_transforms(size, channels, model.preprocessing)

    def log_odds(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = model(x)
        return out[:, 1] - out[:, 0]

    lesion, mirrored, corr = [], [], {"as is": [], "flipped top-bottom": [], "flipped left-right": [],
                                      "transposed": []}
    patch = size // 8
    for item in [i for i in cohort.test if i.get("mask")][:args.images]:
        d = transforms(dict(item))
        x, mask = d["image"][None], d["mask"][0].numpy() > 0  # x-first arrays: axis 1 runs top to bottom
        base, fill = log_odds(x), x.mean()
        for region, out in ((mask, lesion), (np.flip(mask, axis=1).copy(), mirrored)):
            xo = x.clone()
            xo[0][:, torch.from_numpy(region)] = fill
            out.append(float((base - log_odds(xo)).abs()))
        occluded = []
        for i in range(8):
            for j in range(8):
                xo = x.clone()
                xo[..., i * patch:(i + 1) * patch, j * patch:(j + 1) * patch] = fill
                occluded.append(xo)
        occlusion = (base - log_odds(torch.cat(occluded))).abs().reshape(8, 8).numpy()
        cam = F.adaptive_avg_pool2d(gradcam_maps(model, x, 1)[None], 8)[0, 0].numpy()
        for name, m in (("as is", cam), ("flipped top-bottom", cam[:, ::-1]), ("flipped left-right", cam[::-1, :]),
                        ("transposed", cam.T)):
            corr[name].append(np.corrcoef(occlusion.ravel(), m.ravel())[0, 1])
    lesion, mirrored = np.array(lesion), np.array(mirrored)
    print(f"run {runs[0].info.run_id}, {len(lesion)} test images with a lesion mask")
    print(f"occluding the lesion changes the log-odds by {lesion.mean():.3f} on average, the mirrored region by "
          f"{mirrored.mean():.3f}; lesion larger in {np.mean(lesion > mirrored):.0%} of images")
    for name, values in corr.items():
        print(f"Grad-CAM ({name}) vs occlusion map: mean correlation {np.nanmean(values):+.3f}")


if __name__ == "__main__":
    main()
