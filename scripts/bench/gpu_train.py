#!/usr/bin/env python
"""Training images/s of the classification bundle on a GPU against the same model on synthetic tensors
already on the GPU, same run (issue 16). `scripts/bench/gpu.sh` runs it and records the figures.

    python scripts/bench/gpu_train.py                            # ResNet50 at 224^2, bf16, 2,000 PNGs
    python scripts/bench/gpu_train.py --docs docs/benchmarks.md  # and append the figures there (GPU only)
    python scripts/bench/gpu_train.py --device cpu --images 32 --size 64 --batch-size 8 --epochs 2
                                                                 # the script's logic on a CPU (a check)

Data: `--images` synthetic ultrasound-like PNGs (`medxfer.synthetic.write_lesion_pngs`, `--src-size`
pixels square, half of them with the finding), ingested and split into 5 folds as a user's PNG folder
would be; the training folds of fold 0 are what both rows train on.

Rows (images/s of the training steps; validation excluded):
  synthetic  the bundle's network (`create_classifier`, channels-last on CUDA), AdamW and cross-entropy in a
             bare loop on one random batch already on the device, under the bundle's autocast dtype
             (bf16 where supported): what the GPU alone can do
  bundle     `medxfer/bundles/classification` as `medxfer train` runs it: the disk item cache (filled when
             the dataset is made, read from disk at every step), `num_workers: auto` loader processes,
             augmentation and normalisation on the GPU, SupervisedTrainer with bf16 autocast; the first
             epoch is a warm-up and not timed, validation only after the last epoch
Target (issue 16): bundle / synthetic >= 0.9 for ResNet50 at 224^2 in bf16.
Without a GPU (and `--device cuda`, the default) it prints "no GPU: nothing measured" and exits 0.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
BUNDLE = REPO / "medxfer" / "bundles" / "classification"
LABEL = "malignant"
NO_GPU = "no GPU: nothing measured"


@dataclass
class BundleFigures:
    """The bundle row: images/s over the timed epochs and what it ran with."""

    images_per_second: float
    timed_images: int
    train_items: int
    loader_workers: int
    device_side: bool
    amp_dtype: torch.dtype | None


def write_cohort(work: Path, images: int, src_size: int) -> Path:
    """``images`` lesion PNGs ingested into ``work/cohort`` and split into 5 folds; reused when present."""
    import numpy as np

    from medxfer.ingest import ingest, split
    from medxfer.synthetic import write_lesion_pngs

    manifest = work / "cohort" / "manifest.csv"
    if manifest.is_file():
        return manifest
    labels = write_lesion_pngs(work / "src", n_images=images, size=(src_size, src_size),
                               rng=np.random.default_rng(0), classes=True)
    ingest(work / "src" / "images", work / "cohort", labels=labels, key="image", modality="US",
           workers=max(1, min(os.cpu_count() or 1, 16)))
    split(work / "cohort", 5, stratify=LABEL, seed=0)
    return manifest


def bundle_overrides(args, manifest: Path, device: torch.device) -> dict:
    """The bundle settings of the bundle row: its defaults (device, autocast, loader, cache, augmentation)
    except the model, size, epochs and batch size asked for; on a CPU the CUDA-only parts off."""
    overrides = dict(manifest=str(manifest), label=LABEL, encoder=args.encoder, weights="scratch", seed=0,
                     epochs=args.epochs, val_interval=args.epochs, batch_size=args.batch_size,
                     image_size=args.size, experiment="medxfer/bench-gpu", bundle_root=str(BUNDLE))
    if device.type != "cuda":  # the bundle's defaults follow torch.cuda.is_available(), not the device asked for
        overrides.update(device=f"$torch.device('{device}')", cuda=False)
    return overrides


def bundle_row(args, manifest: Path, device: torch.device) -> BundleFigures:
    """Images/s of the bundle's training iterations after its first epoch (a device sync at each epoch's
    start and end, none in between: the bundle's loop never waits for the device on its own)."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "train.json"),
                              meta_file=str(BUNDLE / "configs" / "metadata.json"), logging_file=False,
                              workflow_type="train")
    workflow.parser.update(bundle_overrides(args, manifest, device))  # as train_bundle sets them
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    timing = {"start": 0.0, "seconds": 0.0, "images": 0}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    @trainer.on(Events.EPOCH_STARTED)
    def _epoch_started(engine) -> None:
        sync()
        timing["start"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _iteration(engine) -> None:
        if engine.state.epoch == 1:
            return
        batch = engine.state.batch
        timing["images"] += int(batch["image"].shape[0] if isinstance(batch, dict) else len(batch))
        if engine.state.iteration % engine.state.epoch_length == 0:  # the epoch's last step, before validation
            sync()
            timing["seconds"] += time.perf_counter() - timing["start"]

    workflow.run()
    parsed = workflow.parser.get_parsed_content
    figures = BundleFigures(images_per_second=timing["images"] / timing["seconds"], timed_images=timing["images"],
                            train_items=len(parsed("cohort").train), loader_workers=int(parsed("loader_workers")),
                            device_side=bool(parsed("device_side")),
                            amp_dtype=parsed("amp_dtype") if parsed("amp") else None)
    workflow.finalize()
    return figures


def synthetic_row(args, device: torch.device, amp_dtype: torch.dtype | None, images: int) -> float:
    """Images/s of the same network, optimizer and loss on one random batch already on ``device`` for
    about ``images`` images, after ``args.warmup`` untimed steps."""
    from medxfer.models import create_classifier, parameter_groups

    torch.manual_seed(0)
    model = create_classifier(args.encoder, "scratch", num_classes=2, in_channels=1, dropout=0.2)
    model = model.to(device, memory_format=torch.channels_last) if device.type == "cuda" else model.to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-3, 1e-3), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(args.batch_size, 1, args.size, args.size, device=device)
    y = torch.randint(0, 2, (args.batch_size,), device=device)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    steps = max(1, math.ceil(images / args.batch_size))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def device_name(device: torch.device) -> str:
    """The GPU model (``torch.cuda.get_device_name``), or the CPU's description."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def report_markdown(args, device: torch.device, bundle: BundleFigures, synthetic: float, command: str) -> str:
    """The section appended to docs/benchmarks.md: the GPU, the command, what ran, the two rows."""
    dtype = str(bundle.amp_dtype).removeprefix("torch.") if bundle.amp_dtype is not None else "float32"
    ratio = bundle.images_per_second / synthetic
    today = datetime.date.today().isoformat()
    return "\n".join([
        "",
        f"## GPU training: the bundle vs on-device tensors (issue 16), {device_name(device)}, {today}",
        "",
        "Command (writes this section):",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- Machine: {device_name(device)}, {os.cpu_count()} CPU cores; torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}, Python {platform.python_version()}.",
        f"- Data: {args.images} synthetic ultrasound PNGs ({args.src_size}²) ingested and split into 5 folds; "
        f"{bundle.train_items} training images (fold 0).",
        f"- Model: {args.encoder} at {args.size}², batch {args.batch_size}, {dtype} autocast. The bundle row ran "
        f"{args.epochs} epochs; the first was not timed ({bundle.timed_images} images timed). It used "
        f"{bundle.loader_workers} loader workers and the disk item cache, with augmentation "
        f"{'on the GPU' if bundle.device_side else 'on the CPU'}.",
        "",
        "| row | images/s | bundle / synthetic | target |",
        "|---|---|---|---|",
        f"| synthetic: same network, optimizer and loss on a batch already on the GPU | {synthetic:,.0f} | | |",
        f"| bundle: `medxfer train`'s data path and trainer | {bundle.images_per_second:,.0f} | **{ratio:.2f}** "
        "| ≥ 0.9 |",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a check of this script)")
    parser.add_argument("--images", type=int, default=2000, help="synthetic PNGs in the cohort")
    parser.add_argument("--src-size", type=int, default=256, help="the PNGs' side in pixels")
    parser.add_argument("--size", type=int, default=224, help="network input side (image_size)")
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6, help="bundle epochs; the first is a warm-up")
    parser.add_argument("--warmup", type=int, default=10, help="untimed synthetic steps")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the cohort here between invocations")
    parser.add_argument("--docs", type=Path, default=None,
                        help="append the figures to this Markdown file (only when measured on a GPU)")
    parser.add_argument("--command", default=None, help="the command to record in --docs (default: this one)")
    args = parser.parse_args()
    device = torch.device(args.device)
    docs = args.docs.resolve() if args.docs is not None else None  # before the chdir below
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_GPU)
        return
    import logging

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="medxfer-bench-gpu-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MEDXFER_HOME", str(work / "home"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.chdir(work)  # the bundle's run folder (runs/…) goes here
    began = time.perf_counter()
    manifest = write_cohort(work, args.images, args.src_size)
    print(f"# cohort ready ({time.perf_counter() - began:.0f} s): {manifest}", flush=True)
    bundle = bundle_row(args, manifest, device)
    synthetic = synthetic_row(args, device, bundle.amp_dtype, bundle.timed_images)
    dtype = str(bundle.amp_dtype).removeprefix("torch.") if bundle.amp_dtype is not None else "float32"
    print(f"# {device_name(device)}; torch {torch.__version__}; {args.encoder} at {args.size}^2, batch "
          f"{args.batch_size}, {dtype}; {bundle.train_items} training images, {bundle.timed_images} timed; "
          f"{bundle.loader_workers} loader workers; augmentation on device: {bundle.device_side}")
    print(f"{'row':<10} {'img/s':>9} {'ratio':>6}")
    print(f"{'synthetic':<10} {synthetic:9.1f} {1.0:6.2f}")
    print(f"{'bundle':<10} {bundle.images_per_second:9.1f} {bundle.images_per_second / synthetic:6.2f}"
          "   (target >= 0.9)")
    if docs is not None:
        if device.type != "cuda":
            print(f"# not written to {docs}: only GPU figures are recorded")
        else:
            command = args.command or "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
            with open(docs, "a", encoding="utf-8") as f:
                f.write(report_markdown(args, device, bundle, synthetic, command))
            print(f"# appended to {docs}")
    print(f"# total {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
