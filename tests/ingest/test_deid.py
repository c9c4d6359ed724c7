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


def test_path_redactor_hides_identifiers_wherever_they_appear():
    from medxfer.ingest.deid import PathRedactor, path_tokens

    p = Pseudonymizer(b"k" * 32)
    ids = {"PatientID": "MRN0042", "PatientName": "DOE^JANE", "StudyInstanceUID": "1.2.3.4.5",
           "PatientBirthDate": "19700101"}
    redact = PathRedactor(path_tokens(ids, p), p)
    for path in ("Doe_Jane/MRN0042/1.2.3.4.5/IM1.dcm", "png/MRN0042.png", "x/doe jane 1970-01-01/report.txt",
                 "DOE^JANE/1.2.3.4.5.dcm"):
        shown = redact(path)
        low = shown.lower()
        assert not any(s in low for s in ("mrn0042", "doe", "jane", "1.2.3.4.5", "1970")), (path, shown)
        assert shown.count("/") == path.count("/") and "[id-" in shown
    assert redact("png/MRN0042.png").endswith(".png")
    assert redact("export/IM1.dcm") == "export/IM1.dcm"
    assert redact("x/1.2.3.4.6/IM1") == "x/1.2.3.4.6/IM1"  # another UID is not hidden by accident
    assert PathRedactor(path_tokens(ids, Pseudonymizer(b"o" * 32)), p)("MRN0042/a") == "MRN0042/a"  # keyed
