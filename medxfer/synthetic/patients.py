"""Fake patients: realistic, distinct identifiers, and the list of them de-identification must remove."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from .determinism import rng_or_default

__all__ = ["FakePatient", "new_patient"]

_GIVEN = ("ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL",
          "INDIA", "JULIET", "KILO", "LIMA", "MIKE", "NOVEMBER", "OSCAR", "PAPA")
_INSTITUTIONS = ("General Hospital", "St. Elsewhere Medical Center",
                 "Riverside Community Clinic", "Northgate University Hospital")
_REFERRING = ("HOUSE^GREGORY", "QUINN^MICHAELA", "KILDARE^JAMES", "GREY^MEREDITH")


@dataclass
class FakePatient:
    """Fake patient/visit identifiers; :meth:`identifiers` lists what de-identification must remove."""

    name: str = "DOE^JANE"
    patient_id: str = "PID-0001"
    birth_date: str = "19700101"
    sex: str = "F"
    institution: str = "General Hospital"
    accession: str = "ACC0001"
    referring_physician: str = "HOUSE^GREGORY"

    def identifiers(self) -> list[str]:
        """Every identifying string written into headers: names (whole and parts), id, birth date,
        accession, institution, referring physician."""
        vals = [self.name, *self.name.split("^"), self.patient_id, self.birth_date, self.accession,
                self.institution, self.referring_physician, *self.referring_physician.split("^")]
        return list(dict.fromkeys(v for v in vals if v))


def new_patient(i: int, rng: np.random.Generator | None = None) -> FakePatient:
    """Distinct, realistic fake identifiers for patient number `i` (name TESTPAT^<GIVEN><i>, MRN<7 digits>, ...)."""
    rng = rng_or_default(rng)
    birth = date(1935, 1, 1) + timedelta(days=i * 367 + int(rng.integers(0, 360)))
    return FakePatient(
        name=f"TESTPAT^{_GIVEN[i % len(_GIVEN)]}{i}",
        patient_id=f"MRN{1_000_000 + i * 7919 + int(rng.integers(0, 7919)):07d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex="FM"[i % 2],
        institution=_INSTITUTIONS[i % len(_INSTITUTIONS)],
        accession=f"ACC{i:04d}{int(rng.integers(0, 10_000)):04d}",
        referring_physician=_REFERRING[i % len(_REFERRING)],
    )
