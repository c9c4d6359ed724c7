from medxfer.ingest.deid import Pseudonymizer
from medxfer.ingest.secret import load_secret


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


# ---------------------------------------------------------------- issue 17: spellings of identifiers in paths
def _redactor(ids: dict[str, str]):
    from medxfer.ingest.deid import PathRedactor, path_tokens

    p = Pseudonymizer(b"k" * 32)
    return PathRedactor(path_tokens(ids, p), p)


def _hidden(redact, path: str, *spellings: str) -> bool:
    shown = redact(path)
    return "[id-" in shown and not any(s.lower() in shown.lower() for s in spellings)


def test_two_character_name_parts_are_hidden_where_they_name_a_folder():
    """Issue 17 item 2: the real Japanese CD's patient ﾌﾙﾊｼ^ﾀｲﾁ=古橋^大地 has 2-character kanji parts."""
    redact = _redactor({"PatientName": "ﾌﾙﾊｼ^ﾀｲﾁ=古橋^大地"})
    for path in ("古橋/IM1.dcm", "export/大地", "古橋_大地/x", "古橋大地", "大地.古橋/x", "大地 古橋", "古橋さん/x",
                 "MRI_古橋/x", "古橋.txt", "ﾌﾙﾊｼ_ﾀｲﾁ", "ﾀｲﾁ.ﾌﾙﾊｼ", "フルハシ/タイチ"):
        assert _hidden(redact, path, "古橋", "大地", "ﾌﾙﾊｼ", "ﾀｲﾁ", "フルハシ", "タイチ"), (path, redact(path))
    assert redact("古河/大池/series_001") == "古河/大池/series_001"  # other kanji pairs stay
    # a two-letter Latin part hides a folder or file named after it, or beside another part of the name,
    # never the letters inside ordinary names
    redact = _redactor({"PatientName": "LI^WEI"})
    for path in ("Li/IM1.dcm", "x/li.dcm", "LI_WEI/x", "Wei.Li", "wei-li_MR", "Wei_MR_Li", "Li Wei 2019"):
        assert _hidden(redact, path, "li", "wei"), (path, redact(path))
    for path in ("slice/li_x.dcm", "LI_scan/IM1", "t1_li/IM1", "lumbar/delivery", "Lim/IM1"):
        assert redact(path) == path
    # name prefixes and suffixes are not name parts: a patient "MR JANE DOE JR" leaves the folder MR alone
    assert _redactor({"PatientName": "DOE^JANE^^MR^JR"})("MR/JR/IM1") == "MR/JR/IM1"


def test_reformatted_spellings_of_identifiers_are_hidden():
    """Issue 17 item 3: dotted/underscored names, prefixed or zero-padded IDs, dates in every common spelling
    (birth date and the study dates), the institution with underscores."""
    redact = _redactor({"PatientName": "DOE^JANE", "PatientID": "0012345", "PatientBirthDate": "19750329",
                        "InstitutionName": "St Elsewhere General", "StudyDate": "20190312",
                        "AcquisitionDate": "20190313", "OtherPatientIDs": "XY99887\\55443"})
    cases = {
        ("jane", "doe"): ["Jane.Doe/x", "DOE_JANE/x", "doe-jane_MR", "JaneDoe.zip", "x/Doe, Jane/y"],
        ("12345",): ["MRN0012345/x", "ID_12345", "000012345.dcm", "12345", "pat-12345-ct", "MRN12345.png"],
        ("1975", "29.03", "0329", "2903"): ["29.03.1975", "29-03-1975", "03-29-1975", "1975-03-29/x", "1975_3_29",
                                            "scan19750329x", "MR_19750329_1", "29031975", "19750329120000",
                                            "29Mar1975", "March 29, 1975"],
        ("elsewhere",): ["St_Elsewhere_General/x", "ST-ELSEWHERE-GENERAL_MR", "st elsewhere general"],
        ("2019", "0312", "1203"): ["20190312", "2019-03-12/x", "12.03.2019", "2019_03_12_CT", "CT_20190312T1030",
                                   "20190313"],
        ("99887", "55443"): ["99887/x", "OID55443"],
    }
    for spellings, paths in cases.items():
        for path in paths:
            assert _hidden(redact, path, *spellings), (path, redact(path))
    assert redact("png/MRN0012345.png").endswith(".png")
    for path in ("x/2019/03/12/IM1.dcm", "12/3/2019/IM1", "1975/03/29"):  # a date as a folder hierarchy
        assert _hidden(redact, path, "2019", "1975") and redact(path).count("/") == path.count("/"), redact(path)
    assert redact("x/2019/03/14/IM1.dcm") == "x/2019/03/14/IM1.dcm"
    # ordinary names, other numbers and other dates stay as they are
    for path in ("series_001/IMG0001.dcm", "T2_axial/IM0012.dcm", "DICOM/2 mm/1.dcm", "2019/03/x", "20190314",
                 "12346/MRN0012346", "1234/x", "elsewhere/general", "Smith/notes.txt",
                 "st/general/hospital"):
        assert redact(path) == path, (path, redact(path))


def test_identifier_tokens_compare_normalised_forms():
    from medxfer.ingest.deid import identifier_forms, identifier_token, normalize_identifier

    p = Pseudonymizer(b"k" * 32)
    assert normalize_identifier("ＤＯＥ^Jane") == "doejane" and normalize_identifier("ﾌﾙﾊｼ") == "フルハシ"
    assert identifier_token("1970-01-01", p) == identifier_token("19700101", p)
    assert identifier_token("doe_jane", p) == identifier_token("DOE^JANE", p) == p.digest("PathToken", "doejane")[:16]
    long_forms, short = identifier_forms("PatientName", "ﾌﾙﾊｼ^ﾀｲﾁ=古橋^大地")
    assert {"古橋大地", "大地古橋", "フルハシタイチ", "タイチフルハシ", "フルハシ", "タイチ"} <= long_forms
    assert short == {"古橋", "大地"}
    assert identifier_forms("PatientID", "0000110231")[0] == {"0000110231", "110231"}
    assert identifier_forms("PatientID", "0042")[0] == {"0042"}  # "42" would hide every 42
    assert identifier_forms("StudyDate", "2019.03.12")[0] >= {"20190312"}
    assert identifier_forms("BIDSSubject", "01") == identifier_forms("PatientID", "AB") == (set(), set())  # too short
