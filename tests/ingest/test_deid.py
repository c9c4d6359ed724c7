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
