"""``medxfer`` command line: thin wrappers over the library API (tests call the API directly)."""
from __future__ import annotations

import logging
import sys

import click

from . import __version__


def _fail(message: str) -> None:
    """One-line reason on stderr, non-zero exit."""
    click.echo(f"medxfer: error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medxfer")
@click.option("-v", "--verbose", is_flag=True, help="Log more (never identifiers).")
def main(verbose: bool) -> None:
    """medxfer: does medical pretraining (RadImageNet) beat ImageNet on *your* data?

    Ingest a PACS export, train MONAI bundles with swappable pretrained encoders, and compare
    them in a tracked study grid.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")


@main.command()
@click.argument("src", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder: manifest.csv, ingest_report.json, images/.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=str), help="CSV of labels to join onto the items.")
@click.option("--key", help="Key column of --labels: a DICOM keyword (PatientID, AccessionNumber, StudyInstanceUID, "
                            "SeriesInstanceUID, SOPInstanceUID) or a column of file paths (image folders).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: all cores).")
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Pseudonymisation secret (default $MEDXFER_HOME/secret, created on first use). Keep it outside the output.")
@click.option("--color", type=click.Choice(["keep", "gray", "auto"]), default="keep", show_default=True,
              help="RGB images (ultrasound): keep RGB, convert to gray, or gray only when R=G=B.")
@click.option("--voi", type=click.Choice(["record", "apply"]), default="record", show_default=True,
              help="Projection X-ray window/VOI LUT: record it in the manifest, or bake it into the pixels.")
@click.option("--compress/--no-compress", default=False, show_default=True, help="Write .nii.gz instead of .nii.")
@click.option("--modality", default=None, help="Modality for non-DICOM items (e.g. US for a PNG folder).")
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr (default: on a terminal).")
def ingest(src, out, labels, key, workers, secret_file, color, voi, compress, modality, progress):
    """Ingest a PACS export (DICOMDIR or loose files), NIfTI or PNG/JPEG/PGM folder.

    Every file under SRC is accounted for in OUT/ingest_report.json; items go to OUT/manifest.csv
    with keyed pseudonyms instead of identifiers, pixels to OUT/images/*.nii.

    \b
    Example:
      medxfer ingest /media/cdrom --out cohort/ --labels labels.csv --key PatientID
      medxfer ingest busi/images --out busi_cohort --labels busi/labels.csv --key image --modality US
    """
    from .ingest import DecodeOptions, IngestError, ingest as run_ingest

    try:
        result = run_ingest(src, out, labels=labels, key=key, workers=workers, secret_file=secret_file,
                            options=DecodeOptions(color=color, voi=voi, compress=compress),
                            modality=modality, progress=progress)
    except IngestError as exc:
        _fail(str(exc))
    click.echo(result.summary(), err=True)


@main.command()
@click.argument("dir", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--folds", type=int, required=True, help="Number of folds K (>= 2).")
@click.option("--stratify", default=None, help="Manifest column to stratify by (e.g. the label).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed gives the same folds.")
def split(dir, folds, stratify, seed):
    """Patient-level, stratified k-fold split: writes the `fold` column of DIR/manifest.csv.

    \b
    Example:
      medxfer split cohort/ --folds 5 --stratify label --seed 0
    """
    from .ingest import SplitError, split as run_split

    try:
        summary = run_split(dir, folds, stratify=stratify, seed=seed)
    except SplitError as exc:
        _fail(str(exc))
    sizes = ", ".join(f"{k}:{v}" for k, v in summary["items_per_fold"].items())
    click.echo(f"split: {summary['patients']} patients, {summary['items']} items into {folds} folds (items per fold {sizes})", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
