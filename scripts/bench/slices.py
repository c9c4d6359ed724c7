#!/usr/bin/env python
"""2.5D slice samples per second from cached volumes through medxfer's pipeline against a bare
memory-mapped loop, same run; and the peak memory of streaming one 300-slice 512² CT.

    python scripts/bench/slices.py                       # 12 CT volumes of 40 slices at 256², network 224², batch 16
    python scripts/bench/slices.py --volumes 4 --slices 20 --repeat 1 --no-memory   # quick look
    python scripts/bench/slices.py --size 512 --no-memory   # CT-sized slices
    python scripts/bench/slices.py --memory-modality MR  # memory row with per-volume percentiles

Cohort: generated int16 CT volumes (NIfTI), `medxfer ingest --modality CT` and `medxfer split`,
`load_cohort(input="2.5d")` (every slice k is a sample of slices [k-1, k, k+1], ends repeated);
the training samples of fold 0, visited in one shuffled order that every row shares.

Rows (samples/s delivered as batches, by the wall clock and per CPU-second of this process, each
with its ratio to the baseline; torch runs 1 thread, as in a DataLoader worker, so the CPU clock
measures the work itself and is the steadier of the two on a shared, loaded machine):
  baseline        bare loop: the NIfTI memory-mapped by nibabel, the sample's three slices taken
                  from the map, CT window to [0, 1], torch area resize to the network size, ImageNet
                  normalisation (per sample, as the pipeline does; faster than per batch on 512²
                  slices), batch stacked
  Dataset         the bundle's pipeline (`classification_transforms`, augment off) in a MONAI
                  Dataset + DataLoader: every epoch reads the slices again (cold: first epoch with
                  empty per-process caches; warm: a later epoch)
  CacheDataset    as the bundle builds it (cache_rate 1): cold is filling the cache plus the first
                  epoch, warm an epoch served from the cache
The pipeline's first batch is checked to equal the baseline's (same slices, same values).
Target (issue 13): Dataset and CacheDataset cold >= 0.8 x baseline.

Memory (a child process, so that its RSS is its own): ONE 300-slice 512² int16 CT, ingested (the
cache is an uncompressed .nii), all its 2.5D samples streamed through the pipeline in a plain
Dataset (no cache). Peak RSS over the stream minus RSS before it, anonymous memory (decoded
arrays) and file-backed pages separately, sampled every 2 ms; bytes read from files over the
stream (/proc/self/io rchar) as a multiple of the volume's size (a whole-volume read per slice
would be 300x; three slices per sample is 3x; the bare loop reads through the map, which rchar does
not count: its file-backed pages show it instead); the bare loop's figures on the same stream (its
arithmetic is the CT window's, whatever --memory-modality says).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
CT_WINDOW = (40.0, 400.0)  # ModalityPresetd's default CT window (centre, width)


# --------------------------------------------------------------------------- cohort

def ct_volume(rng: np.random.Generator, size: int, slices: int, positive: bool) -> np.ndarray:
    """A CT-like int16 volume in HU: air, a body ellipse of soft tissue with noise, a bright spine
    and, when ``positive``, a low-density lesion over a few slices."""
    x, y = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    body = (x / 0.42) ** 2 + (y / 0.32) ** 2 < 1
    vol = np.full((size, size, slices), -1000, np.int16)
    for k in range(slices):
        sl = np.where(body, 40 + rng.normal(0, 25, (size, size)), -1000)
        sl[((x - 0.18) / 0.06) ** 2 + (y / 0.06) ** 2 < 1] = 700
        if positive and slices // 3 <= k < 2 * slices // 3:
            sl[((x + 0.1) / 0.08) ** 2 + ((y - 0.05) / 0.07) ** 2 < 1] = -20
        vol[:, :, k] = sl.astype(np.int16)
    return vol


def ingest(src: Path, out: Path, modality: str, folds: int, env: dict) -> Path:
    """``medxfer ingest`` + ``medxfer split`` as a user runs them; the manifest path."""
    run = [sys.executable, "-m", "medxfer.cli"]
    for cmd in (["ingest", str(src), "--out", str(out), "--labels", str(src / "labels.csv"), "--key", "image",
                 "--modality", modality, "--workers", "1", "--no-progress"],
                ["split", str(out), "--folds", str(folds), "--stratify", "label"]):
        done = subprocess.run(run + cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"medxfer {cmd[0]} failed: {done.stderr.strip()}")
    return out / "manifest.csv"


def make_cohort(work: Path, volumes: int, size: int, slices: int, modality: str, env: dict,
                big: tuple[int, int] | None = None) -> Path:
    """Generated volumes (``big``: one more of (size, slices), labelled positive) ingested and
    split in 3 folds; reused when already there."""
    import nibabel as nib

    marker = work / "complete"
    if marker.exists():
        return work / "cohort" / "manifest.csv"
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    specs = [(f"v{i:03d}.nii", size, slices, bool(i % 2)) for i in range(volumes)]
    if big:
        specs.append(("big.nii", big[0], big[1], True))
    for name, s, n, positive in specs:
        affine = np.diag([0.7, 0.7, 2.0, 1.0])
        nib.save(nib.Nifti1Image(ct_volume(rng, s, n, positive), affine), src / name)
        rows.append({"image": name, "label": "pos" if positive else "neg"})
    with open(src / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["image", "label"])
        w.writeheader()
        w.writerows(rows)
    manifest = ingest(src, work / "cohort", modality, 3, env)
    marker.touch()
    return manifest


# --------------------------------------------------------------------------- rows

def clear_process_caches() -> None:
    """Empty medxfer's per-process caches of open volumes and percentiles (a cold start)."""
    from medxfer.transforms import volumes

    for fn in (volumes._proxy, volumes._decoded, volumes._percentiles):
        fn.cache_clear()


def bare_batches(samples: list[dict], order: list[int], batch_size: int, size: int, mean, std):
    """The baseline: memory-mapped NIfTI, the slab's slices, CT window, area resize, normalise, stack.

    The arithmetic runs per sample, as in the pipeline: on 512² slices that is about twice as fast
    as running it on the stacked batch (a 16 x 3 x 512² batch does not fit in the CPU caches)."""
    import nibabel as nib

    maps: dict[str, np.ndarray] = {}
    lo, width = CT_WINDOW[0] - CT_WINDOW[1] / 2, CT_WINDOW[1]
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    for i in range(0, len(order), batch_size):
        batch = []
        for j in order[i:i + batch_size]:
            s = samples[j]
            path = s["image_path"]
            if path not in maps:
                img = nib.load(path, mmap="r")
                arr = img.dataobj.get_unscaled()  # np.memmap over the file: nothing decoded
                assert isinstance(arr, np.memmap) and img.dataobj.slope == 1 and img.dataobj.inter == 0
                maps[path] = arr
            slab = np.asarray(maps[path][:, :, list(s["slice_indices"])], dtype=np.float32)  # (X, Y, 3)
            x = ((torch.from_numpy(slab).permute(2, 0, 1) - lo) / width).clamp_(0, 1)
            x = torch.nn.functional.interpolate(x[None], size=(size, size), mode="area")[0]
            batch.append((x - mean_t) / std_t)
        yield torch.stack(batch)


class Clock:
    """Wall-clock and CPU seconds of this process (CPU time is what the work itself costs; on a shared,
    loaded machine the wall clock also counts time spent waiting for a core)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def since(self) -> np.ndarray:
        return np.array([time.perf_counter() - self.wall, time.process_time() - self.cpu])


def time_bare(samples, order, args, mean, std) -> tuple[np.ndarray, torch.Tensor]:
    """(samples/s by wall clock and by CPU time, first batch) of the bare loop."""
    clock, n, first = Clock(), 0, None
    for x in bare_batches(samples, order, args.batch_size, args.image_size, mean, std):
        n += x.shape[0]
        first = x if first is None else first
    return n / clock.since(), first


def loader(dataset, order: list[int], batch_size: int):
    from monai.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=0)


def epoch(dl) -> tuple[int, np.ndarray, torch.Tensor]:
    """(samples, [wall, cpu] seconds, first batch) of one pass over a DataLoader."""
    clock, n, first = Clock(), 0, None
    for batch in dl:
        n += batch["image"].shape[0]
        first = batch["image"] if first is None else first
    return n, clock.since(), first


def time_dataset(samples, order, args, transform) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(cold samples/s, warm samples/s, first batch) of a plain Dataset; rates by wall and CPU clock."""
    from monai.data import Dataset

    clear_process_caches()
    dl = loader(Dataset(samples, transform), order, args.batch_size)
    n, cold, first = epoch(dl)
    n2, warm, _ = epoch(dl)
    return n / cold, n2 / warm, first


def time_cache_dataset(samples, order, args, transform) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(cold samples/s: cache filling + first epoch, warm samples/s, first batch) of a CacheDataset."""
    from monai.data import CacheDataset

    clear_process_caches()
    clock = Clock()
    ds = CacheDataset(samples, transform, cache_rate=1.0, num_workers=0, progress=False)
    fill = clock.since()
    dl = loader(ds, order, args.batch_size)
    n, first_epoch, first = epoch(dl)
    n2, warm, _ = epoch(dl)
    return n / (fill + first_epoch), n2 / warm, first


# --------------------------------------------------------------------------- memory (child process)

class Peak:
    """Peak RssAnon and RssFile of this process (kB from /proc/self/status), sampled in a thread."""

    def __init__(self, every: float = 0.002):
        self.every, self.stop, self.anon, self.file = every, False, 0, 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> tuple[int, int]:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["RssAnon"].split()[0]), int(fields["RssFile"].split()[0])

    def _run(self):
        while not self.stop:
            a, f = self.now()
            self.anon, self.file = max(self.anon, a), max(self.file, f)
            time.sleep(self.every)

    def __enter__(self):
        self.base = self.now()
        self.anon, self.file = self.base
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()


def rchar() -> int:
    return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["rchar"])


def memory_child(manifest: Path, args) -> dict:
    """Stream every 2.5D sample of the big volume through the pipeline (plain Dataset), then
    through the bare loop; peak memory and bytes read of each."""
    from monai.data import Dataset

    from medxfer.engine import load_cohort
    from medxfer.models import preset
    from medxfer.transforms import presets
    from medxfer.transforms.pipelines import classification_transforms

    torch.set_num_threads(args.threads)
    cohort = load_cohort(manifest, "label", fold=0, input="2.5d")
    samples = [s for role in (cohort.train, cohort.val, cohort.test) for s in role
               if Path(s["image_path"]).name.startswith(_big_item_id(manifest))]
    samples.sort(key=lambda s: s["slice"])
    path = samples[0]["image_path"]
    volume_bytes = os.path.getsize(path)
    pre = preset("imagenet")
    transform = classification_transforms(args.image_size, 3, pre, augment=False)
    reads = {"calls": 0, "slices": 0}
    real = presets.read_slices

    def counting(p, indices):
        reads["calls"] += 1
        reads["slices"] += len(indices)
        return real(p, indices)

    presets.read_slices = counting
    dl = loader(Dataset(samples, transform), list(range(len(samples))), args.batch_size)
    out = {"volume_mb": volume_bytes / 2**20, "samples": len(samples)}
    for name, run in (("pipeline", lambda: epoch(dl)[0]),
                      ("bare", lambda: sum(x.shape[0] for x in bare_batches(
                          samples, list(range(len(samples))), args.batch_size, args.image_size, pre.mean, pre.std)))):
        import gc

        gc.collect()
        r0, t0 = rchar(), time.perf_counter()
        with Peak() as peak:
            n = run()
        out[name] = {"samples": n, "seconds": time.perf_counter() - t0,
                     "peak_anon_mb": (peak.anon - peak.base[0]) / 1024,
                     "peak_file_mb": (peak.file - peak.base[1]) / 1024,
                     "read_x_volume": (rchar() - r0) / volume_bytes}
    presets.read_slices = real
    out["read_slices_calls"], out["slices_read"] = reads["calls"], reads["slices"]
    return out


def _big_item_id(manifest: Path) -> str:
    """The item id of the big volume (the one with the most voxels)."""
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return max(rows, key=lambda r: np.prod([int(v) for v in r["shape"].split("x")]))["item_id"]


# --------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=12, help="volumes in the throughput cohort")
    ap.add_argument("--size", type=int, default=256, help="in-plane size of those volumes")
    ap.add_argument("--slices", type=int, default=40, help="slices per volume")
    ap.add_argument("--image-size", type=int, default=224, help="network input size")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="best of N interleaved runs per row")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1, as in a DataLoader worker; 2 on a busy 2-core machine oversubscribes it)")
    ap.add_argument("--no-memory", action="store_true", help="skip the 300-slice 512² memory row")
    ap.add_argument("--memory-slices", type=int, default=300)
    ap.add_argument("--memory-size", type=int, default=512)
    ap.add_argument("--memory-modality", default="CT", help="CT (window) or MR (per-volume percentiles)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "medxfer_bench_slices")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args)))
        return

    env = {**os.environ, "MEDXFER_HOME": str(args.data / "home"), "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    manifest = make_cohort(args.data / f"thr-{args.volumes}-{args.size}-{args.slices}", args.volumes, args.size,
                           args.slices, "CT", env)
    print(f"cohort: {args.volumes} CT volumes {args.size}x{args.size}x{args.slices} int16 "
          f"(generated, ingested and split, or reused, in {time.perf_counter() - t:.0f} s)", flush=True)

    from medxfer.engine import load_cohort
    from medxfer.models import preset
    from medxfer.transforms.pipelines import classification_transforms

    cohort = load_cohort(manifest, "label", fold=0, input="2.5d")
    samples = cohort.train
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0)).tolist()
    pre = preset("imagenet")
    transform = classification_transforms(args.image_size, 3, pre, augment=False)
    for s in samples:  # the page cache holds the volumes, as it does for a cohort in use
        Path(s["image_path"]).read_bytes()

    best = {k: np.zeros(2) for k in ("bare", "ds_cold", "ds_warm", "cache_cold", "cache_warm")}
    diff = 0.0
    for _ in range(args.repeat):  # interleaved, best of each row by each clock
        bare, ref = time_bare(samples, order, args, pre.mean, pre.std)
        best["bare"] = np.maximum(best["bare"], bare)
        cold, warm, first = time_dataset(samples, order, args, transform)
        best["ds_cold"], best["ds_warm"] = np.maximum(best["ds_cold"], cold), np.maximum(best["ds_warm"], warm)
        diff = max(diff, float((first - ref).abs().max()))
        cold, warm, first = time_cache_dataset(samples, order, args, transform)
        best["cache_cold"] = np.maximum(best["cache_cold"], cold)
        best["cache_warm"] = np.maximum(best["cache_warm"], warm)
        diff = max(diff, float((first - ref).abs().max()))
    if diff > 1e-3:
        raise SystemExit(f"the pipeline's first batch differs from the baseline's by {diff:.3g}: not the same work")

    print(f"\n{len(samples)} training samples (fold 0) of {len(cohort.items('train'))} volumes, network "
          f"{args.image_size}², batch {args.batch_size}, augment off, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeat}; first batch equal to the baseline's within {diff:.1e}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'row':34s} {'samples/s':>10s} {'ratio':>6s} {'samples/CPU-s':>14s} {'ratio':>6s}")
    rows = [("baseline (bare mmap loop)", "bare"), ("Dataset, cold (first epoch)", "ds_cold"),
            ("Dataset, warm epoch", "ds_warm"), ("CacheDataset, cold (fill + epoch)", "cache_cold"),
            ("CacheDataset, warm epoch", "cache_warm")]
    for name, key in rows:
        (wall, cpu), (rw, rc) = best[key], best[key] / best["bare"]
        print(f"{name:34s} {wall:10.1f} {rw:6.2f} {cpu:14.1f} {rc:6.2f}")
    results = {"samples": len(samples), "load_average": os.getloadavg()[0],
               **{f"{k}_per_s": v[0] for k, v in best.items()}, **{f"{k}_per_cpu_s": v[1] for k, v in best.items()},
               **{f"{k}_ratio": v[0] / best["bare"][0] for k, v in best.items()},
               **{f"{k}_cpu_ratio": v[1] / best["bare"][1] for k, v in best.items()}}

    if not args.no_memory:
        t = time.perf_counter()
        mem_manifest = make_cohort(
            args.data / f"mem-{args.memory_modality}-{args.memory_size}-{args.memory_slices}", 3, 64, 8,
            args.memory_modality, env, big=(args.memory_size, args.memory_slices))
        print(f"\nmemory volume: {args.memory_size}x{args.memory_size}x{args.memory_slices} int16 "
              f"{args.memory_modality}, ingested (or reused) in {time.perf_counter() - t:.0f} s", flush=True)
        child = subprocess.run([sys.executable, __file__, "--memory-child", str(mem_manifest), "--image-size",
                                str(args.image_size), "--batch-size", str(args.batch_size), "--threads",
                                str(args.threads)], check=True, env=env, capture_output=True, text=True)
        mem = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{mem['samples']} 2.5D samples of one {mem['volume_mb']:.0f} MB .nii, plain Dataset (no cache); "
              f"read_slices called {mem['read_slices_calls']}x for {mem['slices_read']} slices")
        print(f"{'row':12s} {'samples/s':>10s} {'peak anon MB':>13s} {'peak file MB':>13s} {'read / volume':>14s}")
        for name in ("pipeline", "bare"):
            m = mem[name]
            print(f"{name:12s} {m['samples'] / m['seconds']:10.1f} {m['peak_anon_mb']:13.1f} "
                  f"{m['peak_file_mb']:13.1f} {m['read_x_volume']:13.2f}x")
        results["memory"] = mem
    print(f"\ncpu cores: {os.cpu_count()}; python {sys.version.split()[0]}; torch {torch.__version__}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
