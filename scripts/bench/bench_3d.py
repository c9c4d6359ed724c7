#!/usr/bin/env python
"""3D patch training (``input: 3d``): patch samples per second from the bundle's cached pipeline against
MONAI's own CacheDataset pipeline, and a SupervisedTrainer step against a bare PyTorch loop; same run.

    python scripts/bench/bench_3d.py                       # MSD Hippocampus (roi 32³ and 64³) + 128³ synthetic CT
    python scripts/bench/bench_3d.py --synthetic           # no shared data: synthetic volumes only
    python scripts/bench/bench_3d.py --volumes 20 --synthetic-volumes 5 --repeat 1 --train-iters 4   # quick look
    python scripts/bench/bench_3d.py --prototype shared-indices shared-indices+cache-grid   # changes, one row each
    python scripts/bench/bench_3d.py --device cuda         # on a GPU machine (training rows on the GPU)

Data (each ingested with ``medxfer.ingest.ingest`` + ``split(out, 5, seed=0)`` into --workdir, reused there):
  hippocampus  the first --volumes real MR volumes of /work/shared/data/msd_hippocampus_mr (about 35 x 50 x 36,
               labels 0/1/2, three classes); skipped with a message when the folder is absent
  synth-N      --synthetic-volumes generated CT-like int16 volumes of --synthetic-size³ voxels (a body ellipsoid,
               a bright spine, a blob label of one class): large volumes, where fg/bg indices cost more
The training items of fold 0 (``load_cohort(..., input="3d")``), --num-samples patches per volume.

Patch rows (patches/s delivered by a DataLoader, batch --batch-size volumes, num_workers 0 as the bundle
defaults, --epochs / --synthetic-epochs epochs after the cache is built; the cache fill is timed apart;
torch --threads threads; wall clock, and per CPU-second of the child as the steadier "cpu ratio"):
  monai        a plain MONAI pipeline in MONAI's CacheDataset: LoadImaged(ensure_channel_first),
               ScaleIntensityRangePercentilesd(1, 99 -> 0, 1, clip) for MR / ScaleIntensityRanged(CT window
               40/400 -> 0, 1, clip) for CT, NormalizeIntensityd(subtrahend 0.5, divisor 0.5) (the scratch
               weights' [0, 1] -> [-1, 1]), SpatialPadd(roi), RandCropByPosNegLabeld WITHOUT cached indices (the
               tutorial form), the bundle's 3D augmentations, EnsureTyped(track_meta=False)
  medxfer      the bundle's train dataset: CacheDataset(cache_rate 1) over ``segmentation_transforms_3d(...,
               augment=True)`` (fg/bg indices computed once, in the cached part)
  medxfer+P    with --prototype P: medxfer's pipeline with changes prototyped here, '+'-joined:
               int32-indices   the cached indices as int32 (half the bytes of int64)
               shared-indices  int32 indices that CacheDataset's per-access deepcopy shares instead of copying
               cache-grid      RandAffined(spatial_size=roi, cache_grid=True): the sampling grid built once
               no-copy         CacheDataset(copy_cache=False) (a bundle setting, for reference)
               each checked to give the very same patches as medxfer's pipeline, same seeds, over 2 epochs
Both pipelines' cached images are checked to be equal (max |difference| printed).
Target (issue 14): medxfer / monai >= 1.0.

Training rows (iterations/s on the same pre-made patch batches, --train-batch patches of --train-roi³ from the
first data set's medxfer pipeline; ``create_segmenter("resnet18_3d", out_channels=3, decoder_channels=...)``,
DiceCELoss(to_onehot_y, softmax), AdamW(parameter_groups, lr 1e-3, weight decay 1e-4); torch.manual_seed(0)
before the network is built; the first --train-warmup iterations are not timed):
  bare         forward, loss, backward, step
  trainer      MONAI SupervisedTrainer as the bundle configures it (medxfer prepare_batch, SimpleInferer,
               StatsHandler, the run tracker's per-iteration loss read, non_blocking, amp off on the CPU;
               MLflow itself is left out: it writes once per epoch)
Target (issue 14): trainer / bare >= 0.9.

Every row runs in its own child process (so that its peak RSS is its own), the sides interleaved, --repeat
times; the median is printed. Peak RSS: VmHWM of the child, and its growth over its RSS after imports;
``cache`` is the bytes the CacheDataset holds. On CUDA, torch.cuda.max_memory_allocated; else "no GPU".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
HIPPOCAMPUS = Path(os.environ.get("MEDXFER_SHARED_DATA", REPO.parent / "shared" / "data")) / "msd_hippocampus_mr"
SEGMENTS = {"hippocampus": ["anterior", "posterior"]}
CT_WINDOW = (40.0, 400.0)  # ModalityPresetd's default (centre, width)
PROTOTYPES = ("int32-indices", "shared-indices", "cache-grid", "no-copy")


# --------------------------------------------------------------------------- data sets

def _ingest(src: Path, labels: Path, out: Path, modality: str) -> Path:
    from medxfer.ingest import ingest, split

    ingest(src, out, labels=labels, key="image", modality=modality, workers=1)
    split(out, 5, seed=0)
    return out / "manifest.csv"


def hippocampus_cohort(work: Path, volumes: int) -> Path | None:
    """The first ``volumes`` MSD Hippocampus MR volumes ingested (masks stay where they are); None when absent."""
    root = work / f"hippocampus-{volumes}"
    if (root / "complete").exists():
        return root / "cohort" / "manifest.csv"
    if not (HIPPOCAMPUS / "images").is_dir():
        print(f"hippocampus: skipped, {HIPPOCAMPUS} not found (use --synthetic)")
        return None
    names = sorted(p.name for p in (HIPPOCAMPUS / "images").glob("hippocampus_*.nii.gz"))[:volumes]
    shutil.rmtree(root, ignore_errors=True)
    (root / "src").mkdir(parents=True)
    for name in names:  # the ingested folder holds only the chosen images
        shutil.copyfile(HIPPOCAMPUS / "images" / name, root / "src" / name)
    with open(root / "labels.csv", "w", newline="") as f:
        f.write("image,mask\n" + "".join(f"{n},{HIPPOCAMPUS / 'labels' / n}\n" for n in names))
    manifest = _ingest(root / "src", root / "labels.csv", root / "cohort", "MR")
    (root / "complete").touch()
    return manifest


def synthetic_volume(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume in HU (air, a soft-tissue ellipsoid with noise, a bright spine) and a blob label."""
    g = (np.arange(size, dtype=np.float32) / size - 0.5)
    x, y, z = g[:, None, None], g[None, :, None], g[None, None, :]
    body = (x / 0.42) ** 2 + (y / 0.32) ** 2 + (z / 0.48) ** 2 < 1
    vol = np.where(body, 40 + rng.normal(0, 25, (size,) * 3), -1000).astype(np.float32)
    vol[np.broadcast_to(((x - 0.18) / 0.06) ** 2 + (y / 0.06) ** 2 < 1, vol.shape)] = 700
    cx, cy, cz = rng.uniform(-0.2, 0.2, 3)
    r = rng.uniform(0.06, 0.12)
    blob = ((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) < r ** 2
    vol[blob] = 90 + rng.normal(0, 10, int(blob.sum()))
    return vol.astype(np.int16), blob.astype(np.uint8)


def synthetic_cohort(work: Path, volumes: int, size: int) -> Path:
    """``volumes`` generated CT volumes of ``size``³ (1 mm) with blob labels, ingested; reused when there."""
    import nibabel as nib

    root = work / f"synthetic-{volumes}x{size}"
    if (root / "complete").exists():
        return root / "cohort" / "manifest.csv"
    shutil.rmtree(root, ignore_errors=True)
    (root / "src").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(volumes):
        image, label = synthetic_volume(rng, size)
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "src" / f"ct{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "masks" / f"ct{i:03d}.nii.gz")
        rows.append(f"ct{i:03d}.nii.gz,{root / 'masks' / f'ct{i:03d}.nii.gz'}\n")
    with open(root / "labels.csv", "w", newline="") as f:
        f.write("image,mask\n" + "".join(rows))
    manifest = _ingest(root / "src", root / "labels.csv", root / "cohort", "CT")
    (root / "complete").touch()
    return manifest


# --------------------------------------------------------------------------- pipelines

def network(decoder_channels):
    from medxfer.models import create_segmenter

    return create_segmenter("resnet18_3d", out_channels=3, decoder_channels=tuple(decoder_channels))


def cohort(spec: dict):
    from medxfer.engine import load_cohort

    return load_cohort(spec["manifest"], "mask", task="segmentation", input="3d", segments=spec["segments"])


def medxfer_pipeline(spec: dict, num_classes: int):
    """The bundle's train pipeline (``segmentation_transforms`` → ``segmentation_transforms_3d``), with the
    changes named in ``spec["prototype"]`` applied (see PROTOTYPES)."""
    from monai.transforms import FgBgToIndicesd, RandAffined

    from medxfer.models.preprocessing import SCRATCH
    from medxfer.transforms.pipelines3d import segmentation_transforms_3d

    pipeline = segmentation_transforms_3d(spec["roi"], 1, SCRATCH.for_channels(1), True, num_classes, 0.5,
                                          spec["num_samples"], None)
    changes = set((spec.get("prototype") or "").split("+")) - {""}
    steps = list(pipeline.transforms)
    if changes & {"int32-indices", "shared-indices"}:
        i = next(k for k, t in enumerate(steps) if isinstance(t, FgBgToIndicesd))
        steps.insert(i + 1, SharedIndicesd(share="shared-indices" in changes))
    if "cache-grid" in changes:
        i = next(k for k, t in enumerate(steps) if isinstance(t, RandAffined))
        angle = np.deg2rad(15)
        steps[i] = RandAffined(["image", "label"], prob=0.2, rotate_range=(angle, angle, angle),
                               scale_range=(0.1, 0.1, 0.1), mode=["bilinear", "nearest"], padding_mode="zeros",
                               spatial_size=spec["roi"], cache_grid=True)
    pipeline.transforms = steps
    return pipeline


class SharedIndices(np.ndarray):
    """Read-only fg/bg voxel indices that ``deepcopy`` shares instead of copying: CacheDataset deep-copies
    each cached item at every access, and RandCropByPosNegLabeld only reads the indices."""

    def __deepcopy__(self, memo):
        return self


class SharedIndicesd(MapTransform):
    """Prototype: the cached fg/bg indices as int32 (half the bytes of int64; volumes under 2³¹ voxels)
    and, with ``share``, as :class:`SharedIndices` (not copied at each access)."""

    def __init__(self, share: bool) -> None:
        super().__init__(["label_fg_indices", "label_bg_indices"])
        self.share = share

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            if self.share:
                arr = np.asarray(torch.as_tensor(d[key]).numpy(), dtype=np.int32).view(SharedIndices)
                arr.flags.writeable = False
                d[key] = arr
            else:
                d[key] = torch.as_tensor(d[key]).to(torch.int32)
        return d


def monai_pipeline(spec: dict, modality: str):
    """The plain MONAI pipeline a user would write (see the module docstring)."""
    from monai.transforms import (Compose, EnsureTyped, LoadImaged, NormalizeIntensityd, RandCropByPosNegLabeld,
                                  ScaleIntensityRanged, ScaleIntensityRangePercentilesd, SpatialPadd)

    from medxfer.transforms.pipelines3d import augmentations3d

    keys = ["image", "label"]
    if modality == "CT":
        low = CT_WINDOW[0] - CT_WINDOW[1] / 2
        scale = ScaleIntensityRanged("image", a_min=low, a_max=low + CT_WINDOW[1], b_min=0.0, b_max=1.0, clip=True)
    else:
        scale = ScaleIntensityRangePercentilesd("image", lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True)
    roi = spec["roi"]
    return Compose([LoadImaged(keys, image_only=True, ensure_channel_first=True), scale,
                    NormalizeIntensityd("image", subtrahend=0.5, divisor=0.5), SpatialPadd(keys, roi),
                    RandCropByPosNegLabeld(keys, "label", roi, pos=0.5, neg=0.5, num_samples=spec["num_samples"]),
                    *augmentations3d(keys, ("bilinear", "nearest")), EnsureTyped(keys, track_meta=False)])


def cached_part(pipeline, item: dict) -> dict:
    """``item`` through ``pipeline`` up to its first random transform (what CacheDataset caches)."""
    from monai.transforms import Randomizable

    out = dict(item)
    for t in pipeline.transforms:
        if isinstance(t, Randomizable):
            break
        out = t(out)
    return out


def dataset(spec: dict):
    """CacheDataset (cache_rate 1, num_workers 0: the bundle's defaults) of the side named by ``spec``."""
    from monai.data import CacheDataset

    c = cohort(spec)
    if spec["side"] == "monai":
        pipeline = monai_pipeline(spec, spec["modality"])
    else:
        pipeline = medxfer_pipeline(spec, c.num_classes)
    copy = "no-copy" not in (spec.get("prototype") or "").split("+")
    return CacheDataset(c.train, pipeline, cache_rate=1.0, num_workers=0, progress=False, copy_cache=copy)


def nbytes(obj) -> int:
    """Bytes of the arrays and tensors in a (nested) cached item."""
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


# --------------------------------------------------------------------------- child rows

def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def rss_mb() -> float:
    """This process's resident set now, MB."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak resident set, MB: VmHWM, which starts afresh at exec. (``ru_maxrss`` does not: a
    child started by fork + exec reports at least its parent's RSS at the fork.)"""
    try:
        return _status_mb("VmHWM")
    except (OSError, StopIteration):  # no procfs: ru_maxrss (kB on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def data_row(spec: dict) -> dict:
    """Fill the side's cache, then patches/s over ``epochs`` DataLoader epochs."""
    from monai.data import DataLoader
    from monai.utils import set_determinism

    set_determinism(seed=spec["seed"])
    base = rss_mb()
    t0 = time.perf_counter()
    ds = dataset(spec)
    fill = time.perf_counter() - t0
    loader = DataLoader(ds, batch_size=spec["batch_size"], shuffle=True, num_workers=0)
    n, shape = 0, None
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(spec["epochs"]):
        for batch in loader:
            n += batch["image"].shape[0]
            shape = list(batch["image"].shape[1:])
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    assert shape[1:] == list(spec["roi"]) and isinstance(batch["image"], torch.Tensor), shape
    return {"fill_s": fill, "patches": n, "wall_s": wall, "cpu_s": cpu, "volumes": len(ds),
            "cache_mb": nbytes(ds._cache) / 2 ** 20, "rss_base_mb": base, "peak_rss_mb": peak_rss_mb()}


def train_row(spec: dict) -> dict:
    """Iterations/s of one side on the saved patch batches, warm-up iterations excluded."""
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.handlers import StatsHandler, from_engine
    from monai.inferers import SimpleInferer
    from monai.losses import DiceCELoss

    from medxfer.engine.batches import prepare_batch
    from medxfer.models import parameter_groups

    device = torch.device(spec["device"])
    batches = torch.load(spec["batches"])
    base = rss_mb()
    torch.manual_seed(0)
    net = network(spec["decoder_channels"]).to(device)
    lr = 1e-3
    optimizer = torch.optim.AdamW(parameter_groups(net, lr, lr), lr=lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []

    def tick() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    if spec["side"] == "trainer":
        trainer = SupervisedTrainer(
            device=device, max_epochs=1, train_data_loader=batches, network=net, loss_function=loss_fn,
            optimizer=optimizer, inferer=SimpleInferer(), amp=False, non_blocking=True, prepare_batch=prepare_batch,
            train_handlers=[StatsHandler(tag_name="train_loss", output_transform=from_engine(["loss"], first=True))])
        losses: list[float] = []  # as medxfer's RunTracker.attach collects train_loss at every iteration
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: losses.append(
            float(from_engine(["loss"], first=True)(engine.state.output))))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: tick())
        trainer.run()
    else:
        net.train()
        for batch in batches:
            x, y = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
            tick()
    warm = spec["warmup"]
    timed = len(times) - warm
    gpu = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None
    return {"iters": timed, "wall_s": times[-1] - times[warm - 1], "rss_base_mb": base, "peak_rss_mb": peak_rss_mb(),
            "gpu_peak_mb": gpu}


def child(spec: dict) -> None:

    torch.set_num_threads(spec["threads"])
    result = data_row(spec) if spec["row"] == "data" else train_row(spec)
    print("RESULT " + json.dumps(result))


def run_child(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"row {spec['row']}/{spec['side']} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# --------------------------------------------------------------------------- parent

def check_equal(spec: dict) -> float:
    """Max |difference| between the two sides' cached images (and labels) of the first training volume."""

    c = cohort(spec)
    item = c.train[0]
    a = cached_part(medxfer_pipeline(spec, c.num_classes), item)
    b = cached_part(monai_pipeline(spec, spec["modality"]), item)
    if tuple(a["image"].shape) != tuple(b["image"].shape) or not torch.equal(torch.as_tensor(a["label"]),
                                                                             torch.as_tensor(b["label"])):
        raise SystemExit(f"the two pipelines differ on {item.get('item_id')}: {tuple(a['image'].shape)} vs "
                         f"{tuple(b['image'].shape)} or different labels")
    return float((torch.as_tensor(a["image"]) - torch.as_tensor(b["image"])).abs().max())


def check_prototype(spec: dict, prototype: str, epochs: int = 2) -> float:
    """Max |difference| between the patches of medxfer's pipeline and of ``prototype`` over ``epochs`` epochs,
    same seeds (0.0: the change keeps every patch, and the cache is left as it was)."""
    from monai.data import CacheDataset, DataLoader

    c = cohort(spec)
    out = []
    for proto in (None, prototype):
        pipeline = medxfer_pipeline(dict(spec, prototype=proto), c.num_classes)
        pipeline.set_random_state(seed=0)
        ds = CacheDataset(c.train, pipeline, cache_rate=1.0, num_workers=0, progress=False,
                          copy_cache="no-copy" not in (proto or "").split("+"))
        loader = DataLoader(ds, batch_size=spec["batch_size"], shuffle=True, num_workers=0,
                            generator=torch.Generator().manual_seed(0))
        out.append([torch.cat([b["image"].flatten(), b["label"].flatten()]) for _ in range(epochs) for b in loader])
    return max(float((a - b).abs().max()) for a, b in zip(*out, strict=True))


def make_batches(spec: dict, path: Path, count: int) -> list[int]:
    """``count`` batches of ``train_batch`` patches from the medxfer pipeline, saved for the training rows."""
    from monai.data import CacheDataset, DataLoader
    from monai.utils import set_determinism

    set_determinism(seed=0)
    c = cohort(spec)
    ds = CacheDataset(c.train, medxfer_pipeline(spec, c.num_classes), cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=0)
    patches: list[dict] = []
    while len(patches) < count * spec["train_batch"]:
        for batch in loader:
            patches += [{"image": batch["image"][i], "label": batch["label"][i]} for i in range(len(batch["image"]))]
    b = spec["train_batch"]
    batches = [{k: torch.stack([p[k] for p in patches[i * b:(i + 1) * b]]) for k in ("image", "label")}
               for i in range(count)]
    torch.save(batches, path)
    return list(batches[0]["image"].shape)


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help="data sets are ingested here and reused")
    parser.add_argument("--synthetic", action="store_true", help="no shared data: synthetic volumes only")
    parser.add_argument("--volumes", type=int, default=60, help="MSD Hippocampus volumes to ingest")
    parser.add_argument("--rois", type=int, nargs="+", default=[32, 64], help="patch sizes on the hippocampus set")
    parser.add_argument("--synthetic-volumes", type=int, default=10)
    parser.add_argument("--synthetic-size", type=int, default=128)
    parser.add_argument("--synthetic-rois", type=int, nargs="*", default=[64], help="patch sizes there (none: skip)")
    parser.add_argument("--num-samples", type=int, default=4, help="patches per volume per epoch")
    parser.add_argument("--batch-size", type=int, default=2, help="volumes per DataLoader batch")
    parser.add_argument("--epochs", type=int, default=5, help="timed DataLoader epochs per hippocampus row")
    parser.add_argument("--synthetic-epochs", type=int, default=10, help="timed DataLoader epochs per synthetic row")
    parser.add_argument("--prototype", nargs="+", default=[],
                        help=f"also time medxfer with prototyped changes (one row each), '+'-joined from {PROTOTYPES}")
    parser.add_argument("--train-roi", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=8, help="patches per training batch")
    parser.add_argument("--train-iters", type=int, default=20, help="timed training iterations (0: no training rows)")
    parser.add_argument("--train-warmup", type=int, default=3)
    parser.add_argument("--decoder-channels", type=int, nargs=5, default=[256, 128, 64, 32, 16])
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every row")
    parser.add_argument("--device", default=None, help="training rows' device (default: cuda when there is one)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row, sides interleaved; the median is kept")
    parser.add_argument("--json", default=None, help="write all figures here")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.workdir or Path(tempfile.gettempdir()) / "medxfer_bench_3d").resolve()
    work.mkdir(parents=True, exist_ok=True)
    sets = []  # (name, manifest, modality, segments, rois, epochs)
    if not args.synthetic:
        manifest = hippocampus_cohort(work, args.volumes)
        if manifest is not None:
            sets.append(("hippocampus", manifest, "MR", SEGMENTS["hippocampus"], args.rois, args.epochs))
    if args.synthetic or args.synthetic_rois:
        rois = args.synthetic_rois or args.rois
        manifest = synthetic_cohort(work, args.synthetic_volumes, args.synthetic_size)
        sets.append((f"synth-{args.synthetic_size}", manifest, "CT", None, rois, args.synthetic_epochs))
    common = dict(num_samples=args.num_samples, batch_size=args.batch_size, threads=args.threads, seed=0)
    sides = ["monai", "medxfer"] + ["medxfer+" + p for p in args.prototype]
    figures: dict = {"patches": [], "training": None}
    gpu_line = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"CPU ({os.cpu_count()} cores), {gpu_line}; torch {torch.__version__}, threads {args.threads}; "
          f"repeat {args.repeat} (median); batch {args.batch_size} volumes x {args.num_samples} patches")
    header = (f"{'row':30s} {'patches/s':>9s} {'ratio':>6s} {'cpu ratio':>9s} {'fill s':>7s} {'cache MB':>8s} "
              f"{'peak RSS MB':>11s} {'+MB':>6s}")
    for name, manifest, modality, segments, rois, epochs in sets:
        for roi in rois:
            spec = dict(common, row="data", manifest=str(manifest), modality=modality, segments=segments,
                        roi=[roi] * 3, epochs=epochs)
            diff = check_equal(spec)
            same = {p: check_prototype(spec, p) for p in args.prototype}
            runs: dict[str, list[dict]] = {side: [] for side in sides}
            for _ in range(args.repeat):
                for side in sides:
                    proto = side.partition("+")[2] or None
                    runs[side].append(run_child(dict(spec, side=side.partition("+")[0], prototype=proto)))
            first = runs["monai"][0]
            print(f"\n{name} roi {roi}³: {first['volumes']} training volumes, {epochs} epochs, "
                  f"{first['patches']} patches per row; "
                  f"cached images max |medxfer - monai| = {diff:.2g}"
                  + "".join(f"\n  patches max |medxfer+{p} - medxfer| = {v:.2g}" for p, v in same.items()))
            print(header)
            rate = {s: median([dict(r, v=r["patches"] / r["wall_s"]) for r in runs[s]], "v") for s in sides}
            cpu = {s: median([dict(r, v=r["patches"] / r["cpu_s"]) for r in runs[s]], "v") for s in sides}
            for side in sides:
                r = runs[side]
                row = {"set": name, "roi": roi, "side": side, "patches_per_s": rate[side],
                       "ratio": rate[side] / rate["monai"], "cpu_ratio": cpu[side] / cpu["monai"],
                       "fill_s": median(r, "fill_s"), "cache_mb": median(r, "cache_mb"),
                       "peak_rss_mb": median(r, "peak_rss_mb"),
                       "rss_growth_mb": median([dict(x, g=x["peak_rss_mb"] - x["rss_base_mb"]) for x in r], "g")}
                figures["patches"].append(row)
                print(f"{side:30s} {row['patches_per_s']:9.1f} {row['ratio']:6.2f} {row['cpu_ratio']:9.2f} "
                      f"{row['fill_s']:7.2f} {row['cache_mb']:8.1f} {row['peak_rss_mb']:11.0f} "
                      f"{row['rss_growth_mb']:6.0f}")
    if args.train_iters > 0 and sets:
        name, manifest, modality, segments, _, _ = sets[0]
        spec = dict(common, manifest=str(manifest), modality=modality, segments=segments, roi=[args.train_roi] * 3,
                    train_batch=args.train_batch)
        path = work / f"batches-{name}-{args.train_roi}-{args.train_batch}.pt"
        shape = make_batches(spec, path, args.train_warmup + args.train_iters)
        tspec = dict(row="train", batches=str(path), warmup=args.train_warmup, threads=args.threads, device=device,
                     decoder_channels=args.decoder_channels)
        runs = {"bare": [], "trainer": []}
        for _ in range(args.repeat):
            for side in runs:
                runs[side].append(run_child(dict(tspec, side=side)))
        rate = {s: median([dict(r, v=r["iters"] / r["wall_s"]) for r in runs[s]], "v") for s in runs}
        print(f"\ntraining: resnet18_3d FlexibleUNet, decoder {args.decoder_channels}, batches {shape} from "
              f"{name}, {args.train_iters} timed iterations after {args.train_warmup}, device {device}")
        print(f"{'row':30s} {'iter/s':>9s} {'ratio':>6s} {'peak RSS MB':>11s} {'+MB':>6s} {'GPU peak MB':>11s}")
        rows = []
        for side in runs:
            r = runs[side]
            gpu = r[0]["gpu_peak_mb"]
            row = {"side": side, "iters_per_s": rate[side], "ratio": rate[side] / rate["bare"],
                   "peak_rss_mb": median(r, "peak_rss_mb"),
                   "rss_growth_mb": median([dict(x, g=x["peak_rss_mb"] - x["rss_base_mb"]) for x in r], "g"),
                   "gpu_peak_mb": median(r, "gpu_peak_mb") if gpu is not None else None}
            rows.append(row)
            gpu_text = f"{row['gpu_peak_mb']:11.0f}" if gpu is not None else f"{'no GPU':>11s}"
            print(f"{side:30s} {row['iters_per_s']:9.3f} {row['ratio']:6.2f} {row['peak_rss_mb']:11.0f} "
                  f"{row['rss_growth_mb']:6.0f} {gpu_text}")
        figures["training"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
