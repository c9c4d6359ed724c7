"""DICOM defined terms: the only header values ingest ever writes anywhere.

A header value copied to the manifest, the report or the index (modality, body part, view,
laterality, photometric interpretation, rescale type, image type, burned-in annotation) is first
looked up here with :func:`defined_term`: a value outside the vocabulary of its attribute (free
text, which could hold anything, a name included) becomes empty, and the caller records the
attribute's keyword (never the value) so that the report can count it. Also: modalities that
decide how files become items, the identifiers only ever kept as keyed digests, SOP classes that
carry pixels but are not images, and mammography view codes.
"""
from __future__ import annotations

from collections.abc import Collection

from pydicom.pixels.common import PhotometricInterpretation
from pydicom.uid import UID

# Modalities that are one 2D item per image (projection radiography and friends).
PROJECTION_MODALITIES = {"CR", "DX", "PX", "IO", "MG", "RF", "RG", "XA", "DR", "OP", "XC", "SC", "OT", "ES", "GM"}
# Identifiers that may be used to join labels; each is stored only as a keyed digest.
LABEL_KEYWORDS = ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# Header values that must never show in a reported path or a label value (folders named after them are
# common); the dates too (HIPAA counts every date but the year): exports are often sorted into date folders.
PATH_IDENTIFIERS = ("PatientID", "OtherPatientIDs", "PatientName", "OtherPatientNames", "PatientBirthName",
                    "PatientMotherBirthName", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
                    "SeriesInstanceUID", "SOPInstanceUID", "InstitutionName", "StudyDate", "SeriesDate",
                    "AcquisitionDate", "ContentDate")
# SOP classes that carry pixel data but are not images to train on.
NON_IMAGE_WITH_PIXELS = {
    "RTDoseStorage": "RT Dose grid",
    "EncapsulatedPDFStorage": "encapsulated PDF",
    "RawDataStorage": "raw data",
}
# Mask objects ingest turns into label volumes on the grid of the image item they reference
# (:mod:`medxfer.ingest.masks`): SOP class keyword -> the short name the report uses.
MASK_SOP_CLASSES = {"SegmentationStorage": "DICOM SEG", "RTStructureSetStorage": "RT structure set"}
# ImageLaterality / Laterality defined terms (left, right, both, unpaired).
LATERALITIES = ("L", "R", "B", "U")

# SNOMED codes (SRT and SCT) and code meanings for mammography views in ViewCodeSequence.
VIEW_CODES = {
    "R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO",
    "R-10224": "ML", "399260004": "ML", "R-10228": "LM", "399352003": "LM",
    "R-1024A": "XCCL", "399192003": "XCCL", "R-1024B": "XCCM", "399101009": "XCCM",
    "R-10230": "LMO", "399099002": "LMO", "R-10244": "FB", "R-40AAA": "SIO",
}
# Searched in this order: the longer meanings first ("cranio-caudal exaggerated lateral" holds "cranio-caudal").
VIEW_MEANINGS = [("cranio-caudal exaggerated lateral", "XCCL"), ("cranio-caudal exaggerated medial", "XCCM"),
                 ("medio-lateral oblique", "MLO"), ("latero-medial oblique", "LMO"), ("cranio-caudal", "CC"),
                 ("medio-lateral", "ML"), ("latero-medial", "LM")]

# Modality (0008,0060): PS3.3 C.7.3.1.1.1 Defined Terms (= PS3.16 CID 33, which pydicom ships in pydicom.sr, too
# slow to import in every worker: tests/ingest/test_vocabulary.py checks this list against it), the newer
# terms CID 33 in pydicom lacks, the retired terms of C.7.3.1.1.1, and SC and DR (not defined terms, but written by
# secondary-capture and DR systems, and ingest acts on them: PROJECTION_MODALITIES).
MODALITIES = frozenset("""
    AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DMS DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL IVOCT IVUS
    KER KO LEN LS M3D MG MR NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT PX REG RESP RF RG RTDOSE
    RTIMAGE RTPLAN RTRECORD RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XC
    RTINTENT RTRAD RTSEGANN XAPROTOCOL
    AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
    SC DR
""".split())

# BodyPartExamined (0018,0015): the "Body Part Examined" column of PS3.16 Annex L (Correspondence of Anatomic
# Region Codes and Body Part Examined Defined Terms), human and veterinary tables; the standard's own spellings.
BODY_PARTS = frozenset("""
    3RDVENTRICLE 4THVENTRICLE ABDOMEN ABDOMENPELVIS ABDOMINALAORTA ACA ACJOINT ADRENAL AMNIOTICFLUID ANKLE
    ANTCARDIACV ANTCOMMA ANTECUBITALV ANTSPINALA ANTTIBIALA ANUSRECTUMSIGMD AORTA AORTICARCH APPENDIX ARM ARTERY
    ASCAORTA ASCENDINGCOLON ATLANTOAXIAL ATLANTOOCCIPITAL AXILLA AXILLARYA AXILLARYV AZYGOSVEIN BACK BASILARA
    BILEDUCT BILIARYTRACT BLADDER BLADDERURETHRA BRACHIALA BRACHIALV BRAIN BREAST BRONCHUS BULB BUTTOCK
    CALCANEUS CALF CAROTID CARPUS CCA CELIACA CEPHALICV CEREBELLUM CEREBHEMISPHERE CEREBRALA CERVIX CFA CFV
    CHEEK CHEST CHESTABDOMEN CHESTABDPELVIS CHOROIDPLEXUS CIRCLEOFWILLIS CLAVICLE COCCYX COLON COMILIACA
    COMILIACV COMMONBILEDUCT CORNEA CORONARYARTERY CORONARYSINUS CSPINE CTSPINE CULDESAC DESCAORTA
    DESCENDINGCOLON DIGIT DISTALPHALANX DUODENUM EAC EAR ECA ELBOW ENDOARTERIAL ENDOCARDIAC ENDOESOPHAGEAL
    ENDOMETRIUM ENDONASAL ENDONASOPHARYNYX ENDORECTAL ENDORENAL ENDOURETERIC ENDOURETHRAL ENDOVAGINAL
    ENDOVASCULAR ENDOVENOUS ENDOVESICAL EPIDIDYMIS EPIGASTRIC ESOPHAGUS EXTILIACA EXTILIACV EXTJUGV EXTREMITY
    EYE EYELID FACE FACIALA FEMORALA FEMORALV FEMUR FETALARM FETALDIGIT FETALHEART FETALLEG FETALPOLE FIBULA
    FINGER FLANK FONTANEL FOOT FOREARM FOREFETLOCK FOREFOOT FORENAVICULAR FOREPASTERN FRONTALSINUS GALLBLADDER
    GASTRICV GENICULARA GESTSAC GLUTEAL GSV HAND HEAD HEADNECK HEART HEPATICA HEPATICV HINDFETLOCK HINDFOOT
    HINDNAVICULAR HINDPASTERN HIP HUMERUS HYPOGASTRIC HYPOPHARYNX IAC ICA ILEUM ILIACA ILIACV ILIUM INFMESA
    INFVENACAVA INGUINAL INNOMINATEA INNOMINATEV INTILIACA INTJUGULARV INTMAMMARYA INTRACRANIAL JAW JEJUNUM
    JOINT KIDNEY KNEE LACRIMALA LARGEINTESTINE LARYNX LATRIUM LATVENTRICLE LEG LEGS LFEMORALA LHEPATICV
    LHYPOCHONDRIAC LINGUALA LINGUINAL LIVER LLQ LLUMBAR LOWERLEG LOWERLIMB LPORTALV LPULMONARYA LSPINE LSSPINE
    LSUPPULMONARYV LUMBAR LUMBARA LUMEN LUNG LUQ LVENTRICLE MANDIBLE MASTOID MAXILLA MCA MEDIASTINUM MESENTRICA
    MESENTRICV METACARPUS METATARSUS MIDHEPATICV MORISONSPOUCH MOUTH NASOPHARYNX NECK NECKCHEST NECKCHESTABDOMEN
    NECKCHESTABDPELV NOSE OCCIPTALV OCCPITALA OPHTHALMICA OPTICCANAL ORBIT OVARY PANCBILEDUCT PANCREAS
    PANCREATICDUCT PARASTERNAL PARATHYROID PAROTID PATELLA PCA PELVIS PELVISLOWEXTREMT PENILEA PENIS PERINEUM
    PERONEALA PHANTOM PHARYNX PHARYNXLARYNX PLACENTA POPLITEALA POPLITEALFOSSA POPLITEALV PORTALV POSCOMMA
    POSTIBIALA PROFFEMA PROFFEMV PROSTATE PULMONARYA PULMONARYV RADIALA RADIUS RADIUSULNA RATRIUM RECTUM RENALA
    RENALV RETROPERITONEUM RFEMORALA RHEPATICV RHYPOCHONDRIAC RIB RINGUINAL RLQ RLUMBAR RPORTALV RPULMONARYA
    RSUPPULMONARYV RUQ RVENTRICLE SAPHENOUSV SCALP SCAPULA SCJOINT SCLERA SCROTUM SELLA SEMVESICLE SESAMOID SFA
    SFJ SFV SHOULDER SIGMOID SIJOINT SKULL SMA SMALLINTESTINE SPINALCORD SPINE SPLEEN SPLENICA SPLENICV SSPINE
    STERNUM STIFLE STOMACH SUBCLAVIANA SUBCLAVIANV SUBCOSTAL SUBMANDIBULAR SUPRACLAVICULAR SUPRAPUBIC
    SUPTHYROIDA SVC TAIL TARSUS TESTIS THALAMUS THIGH THORACICAORTA THORAX THUMB THYMUS THYROID TIBIA
    TIBIAFIBULA TLSPINE TMJ TOE TONGUE TRACHEA TRACHEABRONCHUS TRANSVERSECOLON TSPINE UGITRACT ULNA ULNARA
    UMBILICAL UMBILICALA UMBILICALV UPPERARM UPPERLIMB UPRURINARYTRACT URETER URETHRA URINARYTRACT UTERUS VAGINA
    VEIN VERTEBRALA VULVA WHOLEBODY WING WRIST ZYGOMA
""".split())

# ViewPosition (0018,5101): PS3.3 C.8.1.1 / C.8.11.5 (CR Series, DX Positioning) Defined Terms, and the short
# names of the mammography views of PS3.16 CID 4014 (View for Mammography) that MG headers write there.
VIEW_POSITIONS = frozenset("""
    AP PA LL RL RLD LLD RLO LLO
    CC MLO ML LM LMO XCC XCCL XCCM FB SIO CV AT
""".split())

# PhotometricInterpretation (0028,0004): PS3.3 C.7.6.3.1.2, as pydicom lists them (retired terms included).
PHOTOMETRIC_INTERPRETATIONS = frozenset(str(v.value) for v in PhotometricInterpretation)

# RescaleType (0028,1054) and ModalityLUTType (0028,3004): PS3.3 C.11.1.1.2 Defined Terms.
RESCALE_TYPES = frozenset("OD HU US MGML Z_EFF ED EDW HU_MOD PCT".split())

# ImageType (0008,0008): values 1 and 2 (PS3.3 C.7.6.1.1.2), the value-3 terms of CT (C.8.2.1.1.1) and MR
# (C.8.3.1.1.1), and the Enhanced objects' value 3/4 terms (C.8.16.1). Other values are implementation-specific
# free text: left out, silently (they are common and nothing depends on them).
IMAGE_TYPES = frozenset(t for line in """
    ORIGINAL|DERIVED|PRIMARY|SECONDARY
    AXIAL|LOCALIZER
    DENSITY MAP|DIFFUSION MAP|IMAGE ADDITION|MODULUS SUBTRACT|MPR|OTHER|PHASE MAP|PHASE SUBTRACT|PROJECTION IMAGE
    T1 MAP|T2 MAP|VELOCITY MAP
    VOLUME|MIXED|NONE
""".strip().splitlines() for t in line.strip().split("|"))

# BurnedInAnnotation (0028,0301): PS3.3 C.7.6.1.1.7 Enumerated Values.
BURNED_IN_VALUES = ("YES", "NO")
# Modalities whose pixels often carry text (a name, a date) whatever BurnedInAnnotation says: ultrasound,
# secondary capture, other.
PIXEL_TEXT_MODALITIES = frozenset({"US", "SC", "OT"})

# Kept in place of a value that is not a defined term where "" would mean something (RescaleType: "" is HU for CT).
UNRECOGNISED = "unrecognised"
# What an unrecognised value of each attribute costs, for the report (the value itself is never quoted).
UNRECOGNISED_EFFECT = {
    "Modality": "modality column left empty",
    "BodyPartExamined": "body_part column left empty",
    "ViewPosition": "view column left empty",
    "ImageLaterality": "laterality column left empty",
    "RescaleType": "intensity reported as rescaled, not HU",
    "BurnedInAnnotation": "burned_in reported as unknown",
}


def defined_term(value: object, terms: Collection[str], *, squeeze: bool = False) -> str | None:
    """The defined term ``value`` holds (upper-case, padding stripped): ``""`` when it is empty, ``None``
    when it is not one of ``terms`` (the caller keeps the attribute's keyword, never the value).

    ``squeeze`` also drops spaces, ``_`` and ``-`` (``"L SPINE"`` is ``LSPINE``): for terms written
    without separators, such as Annex L body parts."""
    v = str(value or "").strip().upper()
    if not v:
        return ""
    if squeeze:
        v = v.replace(" ", "").replace("_", "").replace("-", "")
    return v if v in terms else None


def registered_sop_class(value: object) -> str:
    """A SOP Class UID only when pydicom knows its name (a registered UID); else ``""`` (free text)."""
    uid = UID(str(value or "").strip())
    return str(uid) if uid and uid.is_valid and uid.name != str(uid) else ""


def may_show_text_in_pixels(h: dict) -> bool:
    """Ultrasound, secondary-capture and "other" images: their pixels often show the patient's name."""
    if h.get("modality") in PIXEL_TEXT_MODALITIES:
        return True
    keyword = UID(h.get("sop_class") or "").keyword
    return "SecondaryCapture" in keyword or "Ultrasound" in keyword
