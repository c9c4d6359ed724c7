"""The DICOM defined terms: the only header values ingest writes to a manifest, report or index."""
from __future__ import annotations

import pytest
from pydicom.pixels.common import PhotometricInterpretation
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, UltrasoundMultiFrameImageStorage

from medxfer.ingest.vocabulary import (BODY_PARTS, MODALITIES, PHOTOMETRIC_INTERPRETATIONS, PROJECTION_MODALITIES,
                                       VIEW_CODES, VIEW_POSITIONS, defined_term, may_show_text_in_pixels,
                                       registered_sop_class)


@pytest.mark.parametrize("value,terms,kept", [
    ("chest", BODY_PARTS, "CHEST"), (" LSPINE ", BODY_PARTS, "LSPINE"), ("", BODY_PARTS, ""), (None, BODY_PARTS, ""),
    ("YAMADA", BODY_PARTS, None),  # upper-case letters, <= 16: the code-string alphabet alone let it through
    ("CHEST OF DOE", BODY_PARTS, None), ("DOE^JANE", BODY_PARTS, None), ("L SPINE", BODY_PARTS, None),
    ("ct", MODALITIES, "CT"), ("TARO", MODALITIES, None),
    ("pa", VIEW_POSITIONS, "PA"), ("YAMADA", VIEW_POSITIONS, None),
])
def test_defined_term_keeps_only_terms_of_the_vocabulary(value, terms, kept):
    assert defined_term(value, terms) == kept


def test_squeeze_reads_body_parts_written_with_separators():
    assert defined_term("l spine", BODY_PARTS, squeeze=True) == "LSPINE"
    assert defined_term("Chest-Abdomen", BODY_PARTS, squeeze=True) == "CHESTABDOMEN"
    assert defined_term("YAMADA TARO", BODY_PARTS, squeeze=True) is None


def test_common_body_parts_and_views_are_terms():
    assert {"CHEST", "ABDOMEN", "HEAD", "BRAIN", "LSPINE", "CSPINE", "TSPINE", "SPINE", "PELVIS", "BREAST", "KNEE",
            "SKULL", "JAW", "HEADNECK", "WHOLEBODY", "ABDOMENPELVIS"} <= BODY_PARTS
    views = {"AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO", "CC", "MLO", "ML", "LM", "XCCL", "XCCM"}
    assert views <= VIEW_POSITIONS
    assert set(VIEW_CODES.values()) <= VIEW_POSITIONS  # what the ViewCodeSequence gives is a term too


def test_modalities_hold_pydicoms_cid_33_and_every_modality_ingest_acts_on():
    from pydicom.sr._cid_dict import cid_concepts  # slow to import: the vocabulary hand-writes the list
    from pydicom.sr.codedict import codes

    cid_33 = {getattr(codes.DCM, keyword).value for keyword in cid_concepts[33]["DCM"]}
    assert cid_33 <= MODALITIES
    assert PROJECTION_MODALITIES <= MODALITIES


def test_photometric_interpretations_are_pydicoms():
    assert PHOTOMETRIC_INTERPRETATIONS == {str(v.value) for v in PhotometricInterpretation}
    assert {"MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL_422"} <= PHOTOMETRIC_INTERPRETATIONS


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_only_registered_sop_classes_are_kept():
    assert registered_sop_class(CTImageStorage) == CTImageStorage
    assert registered_sop_class("1.2.826.0.1.3680043.8.498.4242") == ""  # valid, unregistered
    assert registered_sop_class("DOE^JANE") == "" and registered_sop_class(None) == ""


@pytest.mark.parametrize("h,risky", [
    ({"modality": "US"}, True), ({"modality": "SC"}, True), ({"modality": "OT"}, True),
    ({"modality": "CT", "sop_class": SecondaryCaptureImageStorage}, True),  # a screen capture of a CT
    ({"modality": "", "sop_class": UltrasoundMultiFrameImageStorage}, True),
    ({"modality": "CT", "sop_class": CTImageStorage}, False), ({"modality": "DX", "sop_class": ""}, False),
])
def test_images_whose_pixels_often_show_text(h, risky):
    assert may_show_text_in_pixels(h) == risky
