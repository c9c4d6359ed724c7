from medxfer.ingest.deid import Pseudonymizer, load_secret


def test_same_secret_same_pseudonyms_other_secret_other(tmp_path):
    a = load_secret(tmp_path / "a")
    b = load_secret(tmp_path / "b")
    assert load_secret(tmp_path / "a") == a  # created once, then reused
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o600
    pa, pa2, pb = Pseudonymizer(a), Pseudonymizer(a), Pseudonymizer(b)
    assert pa.pseudonym("PatientID", "MRN123") == pa2.pseudonym("PatientID", "MRN123")
    assert pa.pseudonym("PatientID", "MRN123") != pb.pseudonym("PatientID", "MRN123")
    # domains are separated: the same string as a PatientID and as an AccessionNumber differ
    assert pa.digest("PatientID", "X1") != pa.digest("AccessionNumber", "X1")
    # DICOM padding does not change the pseudonym
    assert pa.digest("PatientID", "MRN123 ") == pa.digest("PatientID", "MRN123")
    assert "MRN123" not in pa.pseudonym("PatientID", "MRN123")


def test_short_secret_is_refused(tmp_path):
    import pytest

    (tmp_path / "s").write_text("short")
    with pytest.raises(ValueError, match="at least 16"):
        load_secret(tmp_path / "s")


def test_redact_path_hides_identifiers_and_neighbours(tmp_path):
    from medxfer.ingest.deid import propagate_redactions, redact_path

    p = Pseudonymizer(b"k" * 32)
    ids = {"PatientID": "MRN0042", "PatientName": "DOE^JANE", "StudyInstanceUID": "1.2.3.4.5"}
    shown = redact_path("Doe_Jane/MRN0042/1.2.3.4.5/IM1.dcm", ids, p)
    assert "MRN0042" not in shown and "1.2.3.4.5" not in shown and "doe" not in shown.lower() and "jane" not in shown.lower()
    assert shown.endswith("/IM1.dcm") and shown.count("/") == 3
    assert redact_path("export/IM1.dcm", ids, p) == "export/IM1.dcm"
    display = {"Doe_Jane/MRN0042/1.2.3.4.5/IM1.dcm": shown, "Doe_Jane/MRN0042/README.txt": "Doe_Jane/MRN0042/README.txt"}
    out = propagate_redactions(display)
    assert out["Doe_Jane/MRN0042/README.txt"] == "/".join(shown.split("/")[:2]) + "/README.txt"
