#!/usr/bin/env python
"""Training throughput of the classification bundle against a bare PyTorch loop, same run.

    python scripts/bench/train.py                      # 96 panoramics, ResNet18 at 128^2, batch 16
    python scripts/bench/train.py --encoder resnet50 --image-size 224 --patients 64   # heavier model
    python scripts/bench/train.py --device cuda        # on a GPU machine (both rows on the GPU)

Rows (images/s over the timed epochs; the first epoch of each is a warm-up and not timed):
  baseline   bare loop: the same network, optimizer, loss and batch size on tensors already
             decoded, preprocessed and stacked in memory (no data loader, no augmentation)
  bundle     `medxfer/bundles/classification` through MONAI's ConfigWorkflow: CacheDataset, DataLoader,
             augmentation, SupervisedTrainer, MLflow logging (validation time excluded)
Target (issue 4): bundle / baseline >= 0.9 on CPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def overrides(args, manifest: Path) -> dict:
    return dict(manifest=str(manifest), label="supernumerary", encoder=args.encoder, weights="scratch",
                epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, in_channels=1,
                augment=not args.no_augment, num_workers=args.workers, seed=0,
                device=f"$torch.device('{args.device}')", amp=False, experiment="medxfer/bench",
                bundle_root=str(Path(__file__).resolve().parents[2] / "medxfer" / "bundles" / "classification"))


def bundle_throughput(args, manifest: Path) -> tuple[float, int]:
    """Images/s of the bundle's training iterations after the first epoch."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    root = Path(__file__).resolve().parents[2] / "medxfer" / "bundles" / "classification" / "configs"
    wf = ConfigWorkflow(config_file=str(root / "train.json"), meta_file=str(root / "metadata.json"),
                        logging_file=False, workflow_type="train", **overrides(args, manifest))
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    state = {"t": 0.0, "n": 0, "start": 0.0}

    @trainer.on(Events.EPOCH_STARTED)
    def _start(engine):
        state["start"] = time.perf_counter()

    # The epoch's training part ends before ValidationHandler runs: time to the last iteration.
    last = {"t": 0.0}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _iteration(engine):
        last["t"] = time.perf_counter()
        if engine.state.epoch > 1:
            batch = engine.state.batch
            state["n"] += len(batch) if isinstance(batch, list) else batch["image"].shape[0]

    @trainer.on(Events.EPOCH_COMPLETED)
    def _epoch(engine):
        if engine.state.epoch > 1:
            state["t"] += last["t"] - state["start"]

    wf.run()
    wf.finalize()
    return state["n"] / state["t"], len(wf.parser.get_parsed_content("cohort").train)


def baseline_throughput(args, manifest: Path) -> float:
    """Images/s of a bare loop on pre-stacked tensors with the same model, optimizer and loss."""
    from medxfer.engine import load_cohort
    from medxfer.transforms.pipelines import classification_transforms
    from medxfer.models import create_classifier, parameter_groups

    torch.manual_seed(0)
    device = torch.device(args.device)
    cohort = load_cohort(manifest, "supernumerary", fold=0)
    model = create_classifier(args.encoder, "scratch", num_classes=2, in_channels=1, dropout=0.2).to(device)
    transform = classification_transforms(args.image_size, 1, model.preprocessing, augment=False)
    data = [transform(item) for item in cohort.train]
    images = torch.stack([d["image"] for d in data]).to(device)
    labels = torch.as_tensor([int(d["label"]) for d in data]).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-3, 1e-3), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    timed, n = 0.0, 0
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(images), device=device)
        t0 = time.perf_counter()
        for i in range(0, len(images), args.batch_size):
            idx = order[i:i + args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images[idx]), labels[idx])
            loss.backward()
            optimizer.step()
            if epoch > 1:
                n += len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if epoch > 1:
            timed += time.perf_counter() - t0
    return n / timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=96)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per row; the first is a warm-up")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the bundle row")
    parser.add_argument("--no-augment", action="store_true", help="bundle row without augmentation")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2, help="alternate the rows this many times, keep the best")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medxfer-bench-train-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.chdir(work)
    from medxfer.synthetic import dental_cohort

    manifest, _ = dental_cohort(work, n_patients=args.patients, ceph=False, workers=2)
    base, bundle = 0.0, 0.0
    for _ in range(args.repeats):
        base = max(base, baseline_throughput(args, manifest))
        value, n_train = bundle_throughput(args, manifest)
        bundle = max(bundle, value)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"device {device}; torch threads {torch.get_num_threads()}; {args.encoder} at {args.image_size}^2, "
          f"batch {args.batch_size}, {n_train} training images, epochs {args.epochs} (first untimed), "
          f"augment {not args.no_augment}, best of {args.repeats}")
    print(f"{'row':10s} {'img/s':>8s} {'ratio':>6s}")
    print(f"{'baseline':10s} {base:8.1f} {1.0:6.2f}")
    print(f"{'bundle':10s} {bundle:8.1f} {bundle / base:6.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
