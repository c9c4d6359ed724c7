"""``medxfer`` command line: thin wrappers over the library API (tests call the API directly).

Errors: a :class:`~medxfer.core.errors.MedxferError` from any command is one line on stderr and
exit code 2 (:class:`MedxferGroup`), and so is a full disk or quota (the file, the space left);
other failures of long jobs (training, studies) name their root cause in one line, with the chain
under ``-v``. Library modules are imported inside the
commands so that ``medxfer --help`` and argument errors do not load torch, MONAI and MLflow.
"""
from __future__ import annotations

import logging
import sys
import warnings

import click

from . import __version__
from .core.errors import MedxferError
from .core.files import disk_full_error, disk_full_message


def _fail(message: str) -> None:
    """One-line reason on stderr, non-zero exit."""
    click.echo(f"medxfer: error: {message}", err=True)
    sys.exit(2)


def _out_option(args: list[str]) -> str | None:
    """The value of ``--out`` in a subcommand's arguments, if any (where its files go)."""
    for i, arg in enumerate(args):
        if arg == "--out" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
    return None


def _disk_full_line(exc: BaseException, where: str | None = None) -> str | None:
    """One line for a full disk or quota anywhere in ``exc``'s chain (None when it is not that)."""
    full = disk_full_error(exc)
    return disk_full_message(full, where) if full is not None else None


class MedxferGroup(click.Group):
    """A click group that reports medxfer's own errors as one line (by type, from any subcommand), and a
    full disk or quota (``ENOSPC``/``EDQUOT`` anywhere in the chain) as one line naming the file and the
    free space left; any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        where = _out_option(list(ctx.args))  # the subcommand's output folder, for a write that names no file
        try:
            return super().invoke(ctx)
        except MedxferError as exc:
            full = _disk_full_line(exc, where)
            _fail(full or str(exc))
        except Exception as exc:
            full = _disk_full_line(exc, where)
            if full is None:
                raise
            logging.getLogger("medxfer").debug("disk full", exc_info=exc)
            _fail(full)


@click.group(cls=MedxferGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medxfer")
@click.option("-v", "--verbose", is_flag=True, help="Log more (never identifiers).")
def main(verbose: bool) -> None:
    """medxfer: does medical pretraining (RadImageNet) beat ImageNet on *your* data?

    Ingest a PACS export, train MONAI bundles with swappable pretrained encoders, and compare
    them in a tracked study grid.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    # MONAI announces on import that an optional GPU codec is absent: not news on a CPU machine
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


@main.command()
@click.argument("src", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder: manifest.csv, ingest_report.json, images/.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=str), help="CSV of labels to join onto the items.")
@click.option("--key", help="Key column of --labels: a DICOM keyword (PatientID, AccessionNumber, StudyInstanceUID, "
                            "SeriesInstanceUID, SOPInstanceUID) or a column of file paths (image folders).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: all cores).")
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Pseudonymisation secret (default $MEDXFER_HOME/secret, created on first use). "
                   "Keep it outside the output.")
@click.option("--color", type=click.Choice(["keep", "gray", "auto"]), default="keep", show_default=True,
              help="RGB images (ultrasound): keep RGB, convert to gray, or gray only when R=G=B.")
@click.option("--voi", type=click.Choice(["record", "apply"]), default="record", show_default=True,
              help="Projection X-ray window/VOI LUT: record it in the manifest, or bake it into the pixels.")
@click.option("--compress/--no-compress", default=False, show_default=True, help="Write .nii.gz instead of .nii.")
@click.option("--modality", default=None, help="Modality for non-DICOM items (e.g. US for a PNG folder).")
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr (default: on a terminal).")
@click.option("--patient-column", default=None,
              help="Column of --labels that identifies each item's patient (image folders have no identity): "
                   "hashed into the patient pseudonym, so `medxfer split` keeps a patient's images in one fold.")
@click.option("--burned-in", "burned_in", type=click.Choice(["skip", "keep"]), default="skip", show_default=True,
              help="Images whose header says BurnedInAnnotation=YES: skip them (default), or keep them when "
                   "their pixels have been scrubbed.")
@click.option("--follow-links", is_flag=True, default=False,
              help="Follow symbolic links that point outside SRC (links inside SRC are always followed once).")
@click.option("--rekey", is_flag=True, default=False,
              help="Start OUT over with the current secret although it was built with another one "
                   "(every pseudonym and item id changes).")
def ingest(src, out, labels, key, workers, secret_file, color, voi, compress, modality, progress, patient_column,
           burned_in, follow_links, rekey):
    """Ingest a PACS export (DICOMDIR or loose files), NIfTI or PNG/JPEG/PGM folder.

    Every file under SRC is accounted for in OUT/ingest_report.json; items go to OUT/manifest.csv
    with keyed pseudonyms instead of identifiers, pixels to OUT/images/<ab>/<item_id>.nii.

    \b
    Example:
      medxfer ingest /media/cdrom --out cohort/ --labels labels.csv --key PatientID
      medxfer ingest busi/images --out busi_cohort --labels busi/labels.csv --key image --modality US
      medxfer ingest ddti/images --out thyroid --labels ddti_labels.csv --key image --patient-column case
    """
    from .ingest import DecodeOptions, ingest as run_ingest

    result = run_ingest(src, out, labels=labels, key=key, workers=workers, secret_file=secret_file,
                        options=DecodeOptions(color=color, voi=voi, compress=compress),
                        modality=modality, progress=progress, patient_column=patient_column,
                        burned_in=burned_in, follow_links=follow_links, rekey=rekey)
    click.echo(result.summary(), err=True)


@main.command()
@click.argument("dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--folds", type=int, default=None, help="Number of folds K (>= 2).")
@click.option("--stratify", default=None, help="Manifest column to stratify by (e.g. the label).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed gives the same folds.")
@click.option("--from-column", default=None,
              help="Take the folds from this column instead (a dataset's official split); with --order.")
@click.option("--order", default=None,
              help="With --from-column: its values in fold order, comma-separated (test,val,train: fold 0 tests "
                   "on the official test set, fold 1 = validation).")
def split(dir, folds, stratify, seed, from_column, order):
    """Patient-level, stratified k-fold split: writes the `fold` column of DIR/manifest.csv.

    \b
    Example:
      medxfer split cohort/ --folds 5 --stratify label --seed 0
      medxfer split adrenal/ --from-column split --order test,val,train
    """
    from .ingest import split as run_split
    from .ingest.split import split_from_column

    if from_column:
        if folds is not None or stratify:
            _fail("--from-column takes the folds from a column: leave out --folds and --stratify")
        if not order:
            _fail("--from-column needs --order, its values in fold order (e.g. test,val,train)")
        summary = split_from_column(dir, from_column, order.split(","))
        sizes = ", ".join(f"{k}:{v}" for k, v in summary["items_per_fold"].items())
        click.echo(f"split: {summary['patients']} patients, {summary['items']} items into {summary['folds']} folds "
                   f"from column {from_column} (items per fold {sizes}; {summary['items_without_fold']} without a "
                   "fold)", err=True)
        return
    if folds is None:
        _fail("give --folds K (or --from-column COLUMN --order …)")
    summary = run_split(dir, folds, stratify=stratify, seed=seed)
    sizes = ", ".join(f"{k}:{v}" for k, v in summary["items_per_fold"].items())
    click.echo(f"split: {summary['patients']} patients, {summary['items']} items into {folds} folds "
               f"(items per fold {sizes})", err=True)


@main.group()
def convert() -> None:
    """Public datasets' layouts → an image folder + labels CSV that `medxfer ingest` reads."""


@convert.command("medmnist")
@click.argument("npz", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder: images/<split>/*.png (2D) or *.nii.gz (3D) and labels.csv (image,label,split).")
@click.option("--label-names", default=None,
              help="Class names by index, comma-separated (PneumoniaMNIST: normal,pneumonia); default the index.")
def convert_medmnist(npz, out, label_names):
    """Write a MedMNIST .npz as image files and a labels CSV (image,label,split).

    2D sets become PNG files; 3D sets (AdrenalMNIST3D, VesselMNIST3D, ... 28³ or 64³) become NIfTI
    volumes with the array's last axis as z, the slice axis of 2.5D training, and 1 mm voxels (MedMNIST
    records no spacing). The split column keeps the official train/val/test assignment.

    \b
    Examples:
      medxfer convert medmnist pneumoniamnist.npz --out pneumonia_png --label-names normal,pneumonia
      medxfer ingest pneumonia_png/images --out cohorts/pneumonia \\
          --labels pneumonia_png/labels.csv --key image --modality CR
      medxfer convert medmnist adrenalmnist3d_64.npz --out adrenal_nii --label-names normal,hyperplasia
      medxfer ingest adrenal_nii/images --out cohorts/adrenal \\
          --labels adrenal_nii/labels.csv --key image --modality OT
      medxfer split cohorts/adrenal --folds 5 --stratify label --seed 0
    """
    from .ingest.public import convert_medmnist as run

    result = run(npz, out, [n.strip() for n in label_names.split(",")] if label_names else None)
    click.echo(result.summary(), err=True)


@convert.command("ddti")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder for labels.csv (image,tirads,case,mask); the images stay in SRC.")
def convert_ddti(src, out):
    """Write a labels CSV for a DDTI thyroid folder (images/, masks/, header-less diagnosis.csv).

    \b
    Example:
      medxfer convert ddti DDTI --out ddti_labels
      medxfer ingest DDTI/images --out cohorts/thyroid --labels ddti_labels/labels.csv --key image \\
          --patient-column case --modality US
    """
    from .ingest.public import convert_ddti as run

    result = run(src, out)
    click.echo(result.summary(), err=True)


@main.group()
def weights() -> None:
    """Pretrained weights: import files you supply into the local registry, list them.

    Nothing is downloaded: ImageNet, RadImageNet or your own weights are files you import once
    (sha256 recorded and checked at every load). Weights sources for training are then
    `scratch`, an imported NAME, `file:PATH` or `run:<mlflow run id>`.
    """


@weights.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--name", required=True,
              help="Source name, e.g. imagenet or radimagenet (one name serves several archs).")
@click.option("--arch", required=True, help="Encoder architecture (`medxfer weights archs` lists them).")
# the choices are medxfer.models' FORMATS and PRESETS, written out so that --help imports nothing (a test keeps
# them equal)
@click.option("--format", "fmt", type=click.Choice(["auto", "torchvision", "keras-h5", "radimagenet-pt", "medxfer",
                                                    "medicalnet", "swinunetr-ssl"]),
              default="auto", show_default=True, help="File format (auto: HDF5 is Keras, else by the keys).")
@click.option("--preprocessing", type=click.Choice(["imagenet", "caffe", "caffe-keras", "tf", "scratch", "medicalnet",
                                                    "swin-ssl"]), default=None,
              help="Input preprocessing the weights expect (default: what the format and arch imply).")
@click.option("--sha256", "expected_sha256", default=None, help="Expected sha256 of FILE (e.g. the published one).")
@click.option("--note", default="", help="Free-text provenance (where the file came from).")
@click.option("--replace", is_flag=True, help="Replace an existing NAME/ARCH entry.")
def weights_import(file, name, arch, fmt, preprocessing, expected_sha256, note, replace):
    """Convert FILE once into the registry ($MEDXFER_HOME/weights/NAME/ARCH.pt + .json).

    \b
    Example:
      medxfer weights import RadImageNet-ResNet50_notop.h5 --name radimagenet --arch resnet50_keras
      medxfer weights import resnet50-0676ba61.pth --name imagenet --arch resnet50
      medxfer weights import mobilenet_2_5_224_tf_no_top.h5 --name imagenet --arch mobilenet_v1_025
    """
    from pathlib import Path

    if not Path(file).is_file():  # before torch loads (seconds)
        _fail(f"{file}: no such file")
    from .models import import_weights

    try:
        record = import_weights(file, name, arch, fmt=fmt, preprocessing=preprocessing,
                                expected_sha256=expected_sha256, note=note, replace=replace)
    except ValueError as exc:  # e.g. an unknown arch name
        _fail(str(exc))
    prep = record.preprocessing
    click.echo(f"imported {record.name} for {record.arch} ({record.format}, {record.source_file})\n"
               f"  sha256 source    {record.source_sha256}\n  sha256 converted {record.sha256}\n"
               f"  preprocessing    {prep['mode']}: {prep['note']} "
               f"[{record.provenance.get('preprocessing_reason', '')}]")
    skipped = record.provenance.get("skipped_head")
    if skipped:
        click.echo(f"  head left out    {', '.join(skipped)}")


@weights.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the full records as JSON.")
def weights_list(as_json):
    """List imported weights: name, arch, format, preprocessing, sha256.

    \b
    Example:
      medxfer weights list
    """
    import json

    from .models import list_weights

    records = list_weights()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    if not records:
        click.echo("no weights imported yet (medxfer weights import FILE --name NAME --arch ARCH); "
                   "sources always available: scratch, file:PATH, run:RUN_ID")
        return
    rows = [("NAME", "ARCH", "FORMAT", "PREPROCESSING", "SHA256", "SOURCE FILE")]
    rows += [(r.name, r.arch, r.format, r.preprocessing.get("mode", ""), r.sha256[:12], r.source_file)
             for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@weights.command("archs")
def weights_archs():
    """List encoder architectures and which weight files fit each.

    \b
    Example:
      medxfer weights archs
    """
    from .models import ARCHS

    for spec in ARCHS.values():
        click.echo(f"{spec.name:18s} {spec.spatial_dims}D {spec.layout:12s} {spec.description}")


def _extra_options(args: list[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` pairs after the known options, as given (keys with ``-`` read as ``_``):
    a malformed one is an argument error before any library loads."""
    options, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            _fail(f"unexpected argument {arg!r}: bundle overrides are --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                _fail(f"override --{key} needs a value")
            value, i = args[i + 1], i + 1
        options[key.replace("-", "_") if key not in ("bundle_root",) else key] = value
        i += 1
    return options


def _bundle_overrides(bundle: str, options: dict[str, str]) -> dict:
    """``options`` (:func:`_extra_options`) → bundle overrides: keys of ``bundle``'s settings (else the closest
    one is named), values data only (a value MONAI would evaluate or resolve, ``$…``, ``@…``, ``%…``, ``#``, is
    refused with its key)."""
    from .core.bundle_files import BundleError, check_bundle_keys, check_overrides, parse_override  # no torch

    overrides = {key: parse_override(value) for key, value in options.items()}
    try:
        check_overrides(overrides, prefix="--")  # first: a value MONAI would run is refused as such
        check_bundle_keys(overrides, bundle)
    except BundleError as exc:
        _fail(str(exc))
    return overrides


def _fail_from(exc: BaseException, what: str) -> None:
    """One line naming the root cause (medxfer's own message as is, others with their type)."""
    from .engine.bundles import error_summary

    logging.getLogger("medxfer").debug(what, exc_info=exc)
    _fail(_disk_full_line(exc) or error_summary(exc))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("bundle")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="DIR/manifest.csv from medxfer ingest + medxfer split.")
@click.option("--label", required=True, help="Label column (classification) or mask column (segmentation).")
@click.option("--encoder", required=True, help="Encoder architecture (medxfer weights archs).")
@click.option("--weights", default="scratch", show_default=True,
              help="Weights source: scratch, an imported NAME, file:PATH or run:RUN_ID.")
@click.option("--freeze", default="none", show_default=True, help="none, all or top:K.")
@click.option("--fold", type=int, default=0, show_default=True,
              help="Test fold K (validation is the next fold, training the rest).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes for this one run (DistributedDataParallel, torchrun underneath): one per GPU, "
                   "or CPU processes sharing the cores when there is no GPU.")
@click.pass_context
def train(ctx, bundle, manifest, label, encoder, weights, freeze, fold, nproc):
    """Train BUNDLE (classification | segmentation | a bundle folder) on one fold, tracked in MLflow.

    Any other bundle setting is an override: --epochs 30 --lr 1e-4 --image_size 256
    --batch_size 32 --in_channels 3 --modalities '["PX"]' --class_weighting true.

    \b
    Example:
      medxfer train classification --manifest cohort/manifest.csv --label finding \\
          --encoder resnet50_keras --weights radimagenet --freeze top:10 --fold 2 --epochs 30
      medxfer train classification --manifest cohort/manifest.csv --label finding --encoder resnet50 --nproc 4
    """
    from pathlib import Path

    options = _extra_options(ctx.args)
    if not Path(manifest).is_file():  # before torch and MONAI load (seconds)
        _fail(f"{manifest}: no such manifest (run medxfer ingest first)")
    overrides = _bundle_overrides(bundle, options)  # before torch and MONAI load
    from .core.signals import terminate_raises
    from .engine import train_bundle

    overrides.update(manifest=manifest, label=label, encoder=encoder, weights=weights, freeze=freeze, fold=fold)
    try:
        with terminate_raises():  # SIGTERM (a scheduler's time limit) marks the run FAILED, as Ctrl-C does
            if nproc > 1:  # one run on nproc processes; rank 0 writes the run
                from .engine.distributed import launch_training

                result = launch_training(bundle, nproc, overrides)
            else:
                result = train_bundle(bundle, **overrides)
    except Exception as exc:  # noqa: BLE001 - one line for the user, the chain under -v
        _fail_from(exc, "training failed")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k.startswith("test_"))
    from .tracking import open_runs_command

    click.echo(f"run {result.run_name} ({result.run_id or 'not tracked'}): {shown}")
    click.echo(f"outputs: {result.output_dir}; browse: {open_runs_command()}")


@main.command()
@click.argument("run_id")
@click.argument("data", type=click.Path(exists=True, path_type=str))
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Output folder (default DATA/predictions/RUN_ID).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
def predict(run_id, data, out, batch_size):
    """Predict with the model of MLflow run RUN_ID on DATA, a folder made by medxfer ingest.

    Writes predictions.csv (item_id, p_<class>…, predicted); labels and folds are not needed. A run
    trained on slices of volumes / cines writes one row per volume or cine, its slices aggregated as
    in training, plus a `samples` column. A segmentation run writes masks/<item_id>.nii.gz on each
    item's own grid; one trained on whole volumes (input: 3d) predicts each volume by sliding
    windows of its roi_size (--batch-size windows at a time) and counts voxels_<class> per volume.

    \b
    Example:
      medxfer ingest new_export/ --out new_cohort
      medxfer predict 3f2a9c… new_cohort
    """
    from .engine.predict import predict as run_predict

    try:
        path = run_predict(run_id, data, out, batch_size=batch_size)
    except Exception as exc:  # noqa: BLE001 - one line for the user, the chain under -v
        _fail_from(exc, "prediction failed")
    click.echo(f"predictions: {path}")


def _is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    import ipaddress

    name = host.strip().strip("[]").rstrip(".").lower()
    if name in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it resolves to some interface, maybe a public one
        return False


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. Loopback (127.0.0.0/8, ::1, localhost) keeps the UI on this machine; "
                   "any other address needs --expose.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--expose", is_flag=True,
              help="Allow a --host beyond loopback. MLflow's UI and API have no authentication: whoever reaches "
                   "the port reads and changes every run. Put a reverse proxy with authentication in front.")
def ui(host, port, expose):
    """Start the MLflow UI on the store runs are written to: MLFLOW_TRACKING_URI, or
    $MEDXFER_HOME/mlruns/mlflow.db (~/.medxfer unless MEDXFER_HOME is set), the same from every folder.
    A store that does not exist or holds no run is refused (nothing is created).

    The UI stays on this machine unless exposed on purpose (--host ADDRESS --expose); for
    access from elsewhere keep it on loopback behind a reverse proxy with authentication.

    \b
    Example:
      medxfer ui            # then open http://127.0.0.1:5000
      ssh -L 5000:127.0.0.1:5000 server   # from your laptop, to browse a remote machine's UI
    """
    import os

    from .tracking import check_store_has_runs, client, describe_store, resolve_tracking_uri, ui_command
    from .tracking.ui import study_pages

    uri = resolve_tracking_uri()  # looked at, not created: an empty store is refused below
    if not uri.startswith(("sqlite:", "file:", "/", "mysql", "postgresql", "mssql")) and "://" in uri:
        _fail(f"MLFLOW_TRACKING_URI points at a tracking server ({uri.split('://')[0]}://…): open its own UI")
    if not _is_loopback(host):
        if not expose:
            _fail(f"--host {host} would open the MLflow UI to other machines, and MLflow has no authentication: "
                  "anyone who reaches the port reads and changes every run. Keep the default 127.0.0.1 behind a "
                  "reverse proxy with authentication (README: Security), or add --expose to bind it anyway")
        click.echo(f"medxfer: warning: the MLflow UI on {host}:{port} has no authentication: anyone who can reach "
                   "this port reads and changes every run and artifact. Put a reverse proxy with authentication "
                   "in front of it (README: Security).", err=True)
    check_store_has_runs(uri)  # an EmptyStoreError names the store looked at and how to name another
    argv, env = ui_command(host, port)  # the store URI travels in env, never in argv (visible in `ps`)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"MLflow UI on http://{shown}:{port} (store {describe_store(uri)})", err=True)
    # MLflow 3 opens an experiment in its GenAI view: these links open each study's comparison table instead
    # (listed for a local store; a database server is not connected to before MLflow's own server does)
    if uri.startswith(("sqlite:", "file:", "/")):
        for name, url in study_pages(client(), f"http://{shown}:{port}"):
            click.echo(f"  {name}: {url}", err=True)
    os.execve(argv[0], argv, env)


@main.command()
@click.option("--out", "out", default="medxfer-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=str),
              help="Folder for the export, cohort, demo weights registry and report.")
@click.option("--quick", is_flag=True, help="A smaller, faster run (one encoder, tiny images): a smoke test.")
def demo(out, quick):
    """The main job on an embedded default: a dental PACS export with fake identifiers →
    ingest → split → self-pretraining on cephalograms → study (2 encoders × scratch / self-
    pretrained × freeze none / all × 3 folds) → report. About 4 minutes on 2 CPU cores.

    \b
    Example:
      medxfer demo            # then open the printed report, or run the printed `medxfer ui` line
    """
    from .demo import DemoSettings, run_demo
    from .tracking import open_runs_command

    try:
        result = run_demo(out, DemoSettings.quick() if quick else DemoSettings(),
                          echo=lambda s: click.echo(s, err=True))
    except Exception as exc:  # noqa: BLE001
        _fail_from(exc, "demo failed")
    click.echo(f"report: {result.report}")
    click.echo(f"browse the runs: {open_runs_command(result.tracking_uri)}   "
               f"(experiment medxfer/{result.study}; {result.seconds / 60:.1f} min); it prints the link that opens "
               "the study's comparison")


@main.group()
def study() -> None:
    """Study grids: run a spec (resumable, shardable), then report the comparison."""


@study.command("run")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.option("--shard", "shard_text", default=None, metavar="I/N",
              help="Run the I-th of N disjoint slices of the grid (Slurm arrays, several machines on one "
                   "tracking server).")
@click.option("--dry-run", is_flag=True, help="Print the runs and which are already done; run nothing.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this machine (one run at a time, or a process pool with --max-parallel / --gpus); "
                   "ray: Ray tasks on a local Ray instance or the cluster at --address (pip install 'medxfer[ray]').")
@click.option("--gpus", "gpus_text", default=None, metavar="0,1,…|all",
              help="GPUs to use, one run per GPU at a time (CUDA_VISIBLE_DEVICES per run).")
@click.option("--max-parallel", type=click.IntRange(min=1), default=None,
              help="Runs at once (default: one per GPU, else 1); CPU runs share the cores evenly.")
@click.option("--address", default=None, metavar="auto|HOST:PORT",
              help="The Ray cluster to run on (with --executor ray; default: start a local Ray instance).")
def study_run(spec, shard_text, dry_run, executor, gpus_text, max_parallel, address):
    """Run every cell × fold × seed of SPEC that is not finished yet.

    One MLflow experiment `medxfer/<name>`, a parent run `study/<name>` and a child run per
    cell × fold × seed tagged with its config_hash. Re-running skips finished runs and re-runs
    failed or orphaned (killed) ones. Exit code 1 when a run failed (the others still ran).
    Progress goes to stderr: each run's epochs done / total, elapsed time, the run's ETA and the
    study's (a bar on a terminal, one line per epoch otherwise).

    Several runners may work on one spec at once (shards, executors, machines sharing one tracking
    server): each configuration is claimed atomically and trained once. SIGTERM or Ctrl-C marks the
    runs in progress FAILED before exiting (a SLURM time limit leaves nothing RUNNING).

    \b
    Example:
      medxfer study run study.yaml --dry-run
      medxfer study run study.yaml --shard 2/4      # e.g. SLURM_ARRAY_TASK_ID=2 of 4
      medxfer study run study.yaml --gpus all       # one run per GPU of this machine
      medxfer study run study.yaml --max-parallel 2 # two CPU runs, the cores divided
      medxfer study run study.yaml --executor ray --address auto
      medxfer study report dental-ceph-sex
    """
    from .study import load_spec, parse_shard
    from .study.executors import parse_gpus
    from .study.runner import dry_run as plan, run_study, stage_states
    from .tracking.store import use_tracking

    parsed = load_spec(spec)
    shard_index = parse_shard(shard_text)
    use_tracking(parsed.tracking.get("uri"), parsed.tracking.get("artifact_root"))  # the spec's store, if it names one
    gpus = None
    if gpus_text is not None:
        import torch

        gpus = parse_gpus(gpus_text, torch.cuda.device_count())
    from .tracking import describe_store

    origin = "from the spec's tracking.uri" if parsed.tracking.get("uri") else None
    click.echo(f"runs {'are looked up in' if dry_run else 'go to'} the MLflow store {describe_store(origin=origin)}",
               err=True)
    if dry_run:
        try:
            rows = plan(parsed, shard_index)
            stage_rows = stage_states(parsed)
        except Exception as exc:  # noqa: BLE001 - e.g. an unreachable tracking server
            _fail_from(exc, "dry run failed")
        for label, state in stage_rows:
            click.echo(f"{'pre':>4}  {state:<8} {label}")
        for planned, state in rows:
            click.echo(f"{planned.index + 1:>4}  {state:<8} {planned.name}  config_hash={planned.config_hash}")
        counts = {s: sum(1 for _, x in rows if x == s) for s in ("done", "todo", "failed", "running")}
        click.echo(f"{len(rows)} runs in this shard: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v),
                   err=True)
        return
    try:
        # per epoch: a tqdm bar on a terminal, a plain line in a log file (Slurm, nohup)
        outcome = run_study(parsed, shard_index, echo=lambda line: click.echo(line, err=True),
                            quiet=not logging.getLogger().isEnabledFor(logging.INFO),
                            progress="bars" if sys.stderr.isatty() else "lines", executor=executor, gpus=gpus,
                            max_parallel=max_parallel, address=address)
    except Exception as exc:  # noqa: BLE001
        _fail_from(exc, "study failed")
    click.echo(f"study {parsed.name}: {len(outcome.ran)} ran, {len(outcome.already_done)} already done, "
               f"{len(outcome.failed)} failed; grid {outcome.done_in_grid}/{outcome.total} finished "
               f"(parent run {outcome.parent_run_id})", err=True)
    if outcome.running_elsewhere:
        click.echo(f"  {len(outcome.running_elsewhere)} runs are in progress in another runner (fresh heartbeat): "
                   "run this again once they end to see the grid complete", err=True)
    if outcome.failed:
        for name, reason in outcome.failed:
            click.echo(f"  failed: {name}: {reason}", err=True)
        sys.exit(1)


@study.command("report")
@click.argument("name")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Output folder (default reports/<name>).")
@click.option("--resamples", type=click.IntRange(min=2000), default=2000, show_default=True,
              help="Bootstrap resamples for the CIs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--compare", "compare_by", default=None, metavar="KEY",
              help="Pooled comparison of the values of grid KEY (instead of the spec's compare).")
@click.option("--pool", "pool", default="", metavar="KEYS",
              help="With --compare: grid keys to pool over, comma-separated (folds and seeds always are).")
def study_report(name, out, resamples, seed, compare_by, pool):
    """Statistics and plots of study NAME: report.html, report.md, results.csv (also logged to
    the study's parent run).

    \b
    Example:
      medxfer study report dental-ceph-sex --out reports/dental
      medxfer study report dental-ceph-sex --compare weights --pool encoder,freeze
    """
    pooled = [k.strip() for k in pool.split(",") if k.strip()]
    if pooled and not compare_by:
        raise click.UsageError("--pool needs --compare KEY")
    from .study.report import PooledSpec, build_report

    compare = [PooledSpec(by=compare_by, pool=tuple(pooled))] if compare_by else None
    try:
        paths = build_report(name, out_dir=out, n_resamples=resamples, seed=seed, compare=compare)
    except Exception as exc:  # noqa: BLE001
        _fail_from(exc, "report failed")
    for key in ("report.html", "report.md", "results.csv"):
        if key in paths:
            click.echo(f"{key}: {paths[key]}")


@study.command("similarity")
@click.argument("source", type=click.Path(exists=True, path_type=str))
@click.argument("target", type=click.Path(exists=True, path_type=str))
@click.option("--encoder", default="resnet18", show_default=True, help="The fixed encoder that gives the features.")
@click.option("--weights", default="scratch", show_default=True,
              help="Its weights source (scratch is seeded, so distances are reproducible).")
@click.option("--image-size", type=click.IntRange(min=32), default=128, show_default=True)
@click.option("--in-channels", type=click.Choice(["1", "3"]), default="1", show_default=True)
@click.option("--source-modality", "source_modalities", multiple=True, help="Keep only these modalities (repeatable).")
@click.option("--target-modality", "target_modalities", multiple=True, help="Keep only these modalities (repeatable).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Feature cache folder (default: TARGET/.medxfer/features).")
@click.option("--source-label", default=None, help="The source's label column: with --target-label, Task2Vec too.")
@click.option("--target-label", default=None, help="The target's label column: with --source-label, Task2Vec too.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def study_similarity(source, target, encoder, weights, image_size, in_channels, source_modalities,
                     target_modalities, cache_dir, source_label, target_label, as_json):
    """Distances between two ingested cohorts (folders or manifest files): Fréchet distance and
    MMD of pooled features under a fixed encoder, and an intensity-statistics distance (smaller =
    more similar). With both label columns, the Task2Vec distance of the two classification tasks
    too (the encoder as the probe network). In a study spec, a `similarity:` section measures every
    source cohort and the report correlates the distances with the transfer scores.

    \b
    Example:
      medxfer study similarity pneumonia/ busi/ --target-modality US
      medxfer study similarity pneumonia/ busi/ --source-label finding --target-label malignant
    """
    import json as _json

    from .study.similarity import Task2VecSettings, dataset_similarity

    labelled = bool(source_label and target_label)
    try:
        sim = dataset_similarity(source, target, encoder=encoder, weights=weights, image_size=image_size,
                                 in_channels=int(in_channels), source_modalities=list(source_modalities) or None,
                                 target_modalities=list(target_modalities) or None, cache_dir=cache_dir,
                                 source_label=source_label, target_label=target_label,
                                 task2vec=Task2VecSettings() if labelled else None)
    except ValueError as exc:  # CohortError, a bad modality filter or label column
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001
        _fail_from(exc, "similarity failed")
    record = {"frechet": sim.frechet, "mmd2": sim.mmd2, "intensity": sim.intensity, "task2vec": sim.task2vec,
              "n_source": sim.n_source, "n_target": sim.n_target, "encoder": encoder, "weights": weights}
    if sim.task2vec_note and labelled:
        record["task2vec_note"] = sim.task2vec_note
    if as_json:
        click.echo(_json.dumps(record))
        return
    task2vec = "" if not labelled else (f"Task2Vec          {sim.task2vec:.4g}\n" if sim.task2vec is not None
                                        else f"Task2Vec          n/a ({sim.task2vec_note})\n")
    click.echo(f"Fréchet distance  {sim.frechet:.4g}\nMMD² (RBF)        {sim.mmd2:.4g}\n"
               f"intensity         {sim.intensity:.4g}\n{task2vec}({sim.n_source} source, {sim.n_target} target "
               f"images; {encoder} / {weights}; smaller = more similar)")


if __name__ == "__main__":  # pragma: no cover
    main()
