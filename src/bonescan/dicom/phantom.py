"""The embedded default data: a synthetic, realistic cohort written as real DICOM files.

Why: the pipeline must run end to end without any hospital data, and every stage that faces real
exports -- anonymization, PHI scanning, decoding, view detection, quarantine -- must meet what real
exports contain: hospital-style folder names with patient names in them, identifying values in
headers, sequences and private tags, several ways of storing the two whole-body views, several
transfer syntaxes, and a few broken files. Pixels come from `anatomy` (procedural bone scans with
Poisson counts, chest radiographs); this module owns the fake identities (all in one place), the
DICOM datasets, the on-disk layout (see notes/data_contract.md) and a check that the classes cannot
be told apart by a global image statistic.

Everything is a pure function of `PhantomConfig.seed`: the same seed writes byte-identical files
(dates, times and UIDs are derived from the seed; nothing reads the clock). Bone studies are rendered
a patient per task in `PhantomConfig.workers` processes, each patient from their own random streams,
and put back in plan order, so the number of workers changes no byte either.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from bonescan.config import GROUND_TRUTH_FILE, PhantomConfig
from bonescan.dicom.anatomy import (
    BONE_CLASSES,
    CHEST_CLASSES,
    LESION_FIELDS,
    BoneViews,
    lesion_records,
    progress_findings,
    render_bone_study,
    render_chest,
    render_study,
    sample_acquisition,
    sample_body,
    sample_findings,
)
from bonescan.dicom.read import crop_box
from bonescan.parallel import ordered_map

log = logging.getLogger(__name__)

__all__ = [
    "BadFile",
    "CohortPlan",
    "GROUND_TRUTH",
    "GROUND_TRUTH_COLUMNS",
    "CohortSummary",
    "PlannedStudy",
    "PatientIdentity",
    "StudyIdentity",
    "StudyRecord",
    "global_statistic_separability",
    "global_statistics",
    "make_nm_dataset",
    "make_radiograph_dataset",
    "plan_cohort",
    "sample_patient_identity",
    "sample_study_identity",
    "separability_of_features",
    "write_cohort",
]

NM_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.20")
CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
UID_PREFIX = PYDICOM_ROOT_UID  # a registered-looking root, unlike the anonymizer's 2.25. UUID UIDs
# SNOMED CT codes (CID 26 nuclear-medicine projections, CID 18/25 radionuclide and radiopharmaceutical).
VIEW_CODES = {
    "anterior": ("399321004", "anterior projection"),
    "posterior": ("399001007", "posterior projection"),
}
CHEST_VIEW_CODES = {"PA": ("272479007", "postero-anterior"), "AP": ("399348003", "antero-posterior")}
TC99M = ("72454006", "^99m^Technetium")
MEDRONATE = ("96390006", "Technetium Tc^99m^ medronate")
INTRAVENOUS = ("47625008", "Intravenous route")

REPRESENTATIONS = {"multiframe": 0.4, "two_instances": 0.35, "side_by_side": 0.25}  # contract (a), (b), (c)
BONE_SYNTAXES = {"explicit": 0.7, "rle": 0.15, "jpeg2000": 0.15}
CHEST_SYNTAXES = {"explicit": 0.8, "rle": 0.2}
SYNTAX_UIDS = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg2000": JPEG2000Lossless}
BAD_KINDS = ("truncated", "not_dicom", "no_pixel_data", "unsupported_modality", "burned_in")
CHEST_FOV_MM = 400.0
J2K_MIN_SIDE = 32  # openjpeg always uses 6 DWT resolutions: each side needs >= 2**5 pixels
FIRST_STUDY_DAY = date(2016, 1, 4)
# Per-lesion ground truth beside (not inside) bone/, so ingest never sees it; keyed by the raw (fake)
# StudyInstanceUID, which `bonescan.ceiling` maps to the manifest's study_id with the anonymization key.
GROUND_TRUTH = GROUND_TRUTH_FILE
GROUND_TRUTH_COLUMNS = (
    "study_instance_uid", "accession_number", "label", "superscan",
    "spacing_mm", "view_rows", "view_cols", "body_rows", "body_cols",  # geometry of the anterior view
    "lesion", *LESION_FIELDS,
)  # fmt: skip
BODY_THRESHOLD = 0.02  # body outline: ingest's crop rule (read.crop_box) at its default threshold, no margin


def _rng(seed: int, stream: str, *index: int) -> np.random.Generator:
    """An independent random stream per (seed, purpose, patient): adding patients never changes others."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), *index])


def _uid(seed: int, *parts: object) -> UID:
    """A fixed UID derived from the seed and the object it names (stable across runs and machines)."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=["bonescan-phantom", str(seed), *map(str, parts)])


# --------------------------------------------------------------------------- identities (all PHI here)

# Obviously fake names, addresses and institutions: nothing here may resemble a real person.
_FAMILY = (
    "DOE", "ROE", "MUSTERMANN", "MUSTERFRAU", "SAMPLE", "TESTER", "EXAMPLE", "PLACEHOLDER", "DUMMY",
    "FAKENAME", "PHANTOM", "NOBODY", "MOCK", "BLOGGS", "PUBLIC", "SPECIMEN",
)  # fmt: skip
_GIVEN = {
    "M": ("JOHN", "MAX", "JOE", "FRED", "OTTO", "HANS", "TOM", "SAM"),
    "F": ("JANE", "ERIKA", "MARY", "ANNA", "EVA", "LISA", "KIM", "SUE"),
}
_STREETS = (
    "Sample Street",
    "Example Road",
    "Fiction Lane",
    "Placeholder Avenue",
    "Testing Way",
    "Dummy Close",
)
_CITIES = (
    ("12345", "Springfield"),
    ("54321", "Fakeville"),
    ("99999", "Nowhere Town"),
    ("10101", "Imaginaria"),
)
_INSTITUTIONS = (
    ("Springfield General Hospital", "1 Hospital Road, 12345 Springfield", "NM-GAMMA-01", "SGH"),
    ("Fakeville University Clinic", "2 Campus Drive, 54321 Fakeville", "FUC_NM_2", "FUC"),
    ("Nowhere County Medical Center", "3 Main Street, 99999 Nowhere Town", "NCMCSPECT", "NCMC"),
)
_REFERRERS = ("REFERRER^RITA^^DR", "GENERALIST^GREG^^DR", "ONCOLOGIST^OLGA^^DR", "UROLOGIST^UDO^^DR")
_READERS = ("READER^ROBERT^^DR", "NUCLEAR^NINA^^DR", "RADIOLOGIST^RAY^^DR")
_OPERATORS = ("TECH^TINA", "OPERATOR^OLE", "STAFF^STEFAN", "ASSISTANT^ALMA")


@dataclass(frozen=True)
class PatientIdentity:
    """A fake patient's identifying data (every value here must be removed or replaced by anonymization)."""

    name: str  # DICOM PN, FAMILY^GIVEN^MIDDLE
    patient_id: str
    issuer: str
    other_ids: tuple[str, ...]
    birth_date: date
    sex: str
    address: str
    phone: str
    institution: tuple[str, str, str, str]  # name, address, station, short code

    @property
    def folder(self) -> str:
        """Hospital-export folder name: contains the name and ID on purpose (exercises path scanning)."""
        family, given = self.name.split("^")[:2]
        return f"{family}_{given}_{self.patient_id}"


@dataclass(frozen=True)
class StudyIdentity:
    """A fake study's identifying data and fixed UIDs."""

    accession: str
    study_id: str
    when: datetime  # acquisition start
    injection: datetime
    dose_mbq: float
    referring: str
    reading: str
    operator: str
    requested_procedure_id: str
    scheduled_step_id: str
    study_uid: UID
    series_uid: UID
    frame_of_reference_uid: UID
    sop_uids: tuple[UID, ...]  # per instance number 1, 2, ...

    @property
    def folder(self) -> str:
        return f"{self.when:%Y%m%d}_{self.accession}"

    def sop_uid(self, instance: int) -> UID:
        return self.sop_uids[instance - 1]


def _unique_number(index: int, digits: int, rng: np.random.Generator) -> int:
    """index -> a distinct number of `digits` digits (an affine permutation, so no collisions)."""
    modulus = 10**digits
    a = int(rng.integers(modulus // 10, modulus)) | 1
    while math.gcd(a, modulus) != 1:
        a += 2
    return (a * index + int(rng.integers(modulus))) % modulus


def sample_patient_identity(seed: int, cohort: str, index: int) -> PatientIdentity:
    """The fake identity of patient `index` of `cohort` ("bone", "chest", "bad")."""
    rng = _rng(seed, f"{cohort}-identity", index)
    ids = _rng(seed, f"{cohort}-patient-ids")  # one permutation per cohort keeps IDs distinct
    sex = str(rng.choice(["M", "F"]))
    family, given = _FAMILY[rng.integers(len(_FAMILY))], _GIVEN[sex][rng.integers(len(_GIVEN[sex]))]
    institution = _INSTITUTIONS[rng.integers(len(_INSTITUTIONS))]
    prefix = {"bone": "", "chest": "7", "bad": "9"}[cohort]
    patient_id = f"{institution[3]}{prefix}{_unique_number(index, 7, ids):07d}"
    age_days = int(rng.uniform(35, 88) * 365.25)
    zip_code, city = _CITIES[rng.integers(len(_CITIES))]
    return PatientIdentity(
        name=f"{family}^{given}^{chr(65 + int(rng.integers(26)))}",
        patient_id=patient_id,
        issuer=institution[3],
        other_ids=(f"INS{rng.integers(10**9):09d}", f"OLD-{rng.integers(10**6):06d}"),
        birth_date=FIRST_STUDY_DAY + timedelta(days=int(rng.integers(0, 6 * 365)) - age_days),
        sex=sex,
        address=f"{rng.integers(1, 200)} {_STREETS[rng.integers(len(_STREETS))]}, {zip_code} {city}",
        phone=f"+1-555-01{rng.integers(100):02d}",
        institution=institution,
    )


def sample_study_identity(
    seed: int,
    cohort: str,
    patient_index: int,
    study_index: int,
    accession_index: int,
    after: date | None = None,
) -> StudyIdentity:
    """The fake identity of a study; `after` is the patient's previous study date (repeats 2-14 months on)."""
    rng = _rng(seed, f"{cohort}-study", patient_index, study_index)
    numbers = _rng(seed, f"{cohort}-accessions")
    day = (
        (after + timedelta(days=int(rng.integers(60, 420))))
        if after
        else FIRST_STUDY_DAY + timedelta(days=int(rng.integers(0, 6 * 365)))
    )
    start = datetime(day.year, day.month, day.day, 8, 0, 0) + timedelta(
        seconds=int(rng.integers(0, 8 * 3600))
    )
    key = (cohort, patient_index, study_index)
    prefix = {"bone": "NM", "chest": "RX", "bad": "NX"}[cohort]
    return StudyIdentity(
        accession=f"{prefix}{_unique_number(accession_index, 8, numbers):08d}",
        study_id=f"{rng.integers(10**5, 10**6)}",
        when=start,
        injection=start - timedelta(seconds=int(rng.uniform(2.5, 4.0) * 3600)),
        dose_mbq=float(np.round(rng.uniform(500, 800), 1)),
        referring=_REFERRERS[rng.integers(len(_REFERRERS))],
        reading=_READERS[rng.integers(len(_READERS))],
        operator=_OPERATORS[rng.integers(len(_OPERATORS))],
        requested_procedure_id=f"RP{rng.integers(10**7):07d}",
        scheduled_step_id=f"SPS{rng.integers(10**7):07d}",
        study_uid=_uid(seed, *key, "study"),
        series_uid=_uid(seed, *key, "series"),
        frame_of_reference_uid=_uid(seed, *key, "frame-of-reference"),
        sop_uids=tuple(_uid(seed, *key, "instance", i) for i in (1, 2)),
    )


def _age(birth: date, on: date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _identify(
    ds: Dataset, patient: PatientIdentity, study: StudyIdentity, modality: str, description: str
) -> None:
    """Patient, study, series, equipment and request attributes, with PHI in sequences and private tags."""
    institution, institution_address, station, _ = patient.institution
    when = study.when
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate, ds.InstanceCreationTime = (
        f"{when:%Y%m%d}",
        f"{when + timedelta(minutes=25):%H%M%S}",
    )
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = f"{when:%Y%m%d}"
    ds.StudyTime, ds.SeriesTime = f"{when - timedelta(minutes=5):%H%M%S}", f"{when:%H%M%S}"
    ds.AcquisitionTime, ds.ContentTime = f"{when:%H%M%S}", f"{when + timedelta(minutes=21):%H%M%S}"
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.Manufacturer = "ACME Imaging Systems"
    ds.InstitutionName, ds.InstitutionAddress = institution, institution_address
    ds.ReferringPhysicianName = study.referring
    ds.StationName = station
    ds.StudyDescription = description
    ds.InstitutionalDepartmentName = "Nuclear Medicine" if modality == "NM" else "Radiology"
    ds.PerformingPhysicianName = study.reading
    ds.NameOfPhysiciansReadingStudy = study.reading
    ds.OperatorsName = study.operator
    ds.ManufacturerModelName = "PHANTOMCAM 3000"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = f"{patient.birth_date:%Y%m%d}"
    ds.PatientSex = patient.sex
    ds.OtherPatientIDs = list(patient.other_ids)
    other = []
    for other_id, issuer in zip(patient.other_ids, ("NATIONAL INSURANCE", "LEGACY RIS"), strict=True):
        item = Dataset()
        item.PatientID, item.IssuerOfPatientID, item.TypeOfPatientID = other_id, issuer, "TEXT"
        other.append(item)
    ds.OtherPatientIDsSequence = DicomSequence(other)
    ds.PatientAge = _age(patient.birth_date, when.date())
    ds.PatientAddress = patient.address
    ds.PatientTelephoneNumbers = patient.phone
    ds.AdditionalPatientHistory = f"Referred by {study.referring.split('^')[0].title()}, call {patient.phone}"
    ds.DeviceSerialNumber = f"SN{zlib.crc32(station.encode()) % 10**6:06d}"
    ds.SoftwareVersions = "4.2.1"
    ds.ProtocolName = description
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = study.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    request = Dataset()
    request.AccessionNumber = study.accession
    request.RequestedProcedureID = study.requested_procedure_id
    request.ScheduledProcedureStepID = study.scheduled_step_id
    request.RequestedProcedureDescription = description
    ds.RequestAttributesSequence = DicomSequence([request])
    ds.PerformedProcedureStepID = study.scheduled_step_id.replace("SPS", "PPS")
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = ds.StudyDate, ds.StudyTime
    # Private blocks as vendors write them: a patient name in a GE-Genie-style tag and a RIS block with
    # the patient ID and a private sequence holding the name and birth date.
    genie = ds.private_block(0x0009, "GEMS_GENIE_1", create=True)
    genie.add_new(0x40, "LO", patient.name.replace("^", ",", 1).split("^")[0])
    genie.add_new(0x42, "DA", ds.StudyDate)
    ris = ds.private_block(0x0029, "SPRINGFIELD_RIS_1", create=True)
    ris.add_new(0x10, "LO", patient.patient_id)
    ris.add_new(0x11, "LO", study.accession)
    inner = Dataset()
    inner.PatientName, inner.PatientBirthDate = patient.name, ds.PatientBirthDate
    ris.add_new(0x12, "SQ", DicomSequence([inner]))


def _file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = "NMWORKSTATION"
    ds.file_meta = meta


def _pixels(ds: Dataset, frames: np.ndarray, bits_stored: int = 16) -> None:
    """Image Pixel module for unsigned grey-scale frames (F, H, W)."""
    n, rows, cols = frames.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = ds.get("PhotometricInterpretation", "MONOCHROME2")
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelData = np.ascontiguousarray(frames, dtype="<u2").tobytes()


def make_nm_dataset(
    frames: np.ndarray,
    views: Sequence[str | None],
    patient: PatientIdentity,
    study: StudyIdentity,
    *,
    instance: int = 1,
    pixel_spacing: float = 2.26,
    image_comments: str = "",
    burned_in: bool = False,
) -> Dataset:
    """An NM Image (whole-body, Tc-99m MDP) dataset holding `frames`, uncompressed.

    Args:
        frames: (F, H, W) uint16 counts; F = 2 for one two-frame instance (anterior, posterior).
        views: one entry per detector: "anterior", "posterior" or None (no ViewCodeSequence). With
            F = len(views) frames, DetectorVector is 1..F (frame i was acquired by detector i).
        patient, study: identities (PHI) from `sample_patient_identity` / `sample_study_identity`.
        instance: InstanceNumber; the SOPInstanceUID derives from the series UID and this number.
        pixel_spacing: mm, square pixels.
        image_comments: free text such as "ANT", "POST" or "ANT POST" (side-by-side).
        burned_in: sets BurnedInAnnotation YES (the caller draws the annotation into the pixels).
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint16:
        raise ValueError(f"frames must be (F, H, W) uint16, got {frames.shape} {frames.dtype}")
    n = frames.shape[0]
    if len(views) != n:
        raise ValueError(f"{n} frames need {n} views (one detector per frame), got {len(views)}")
    ds = Dataset()
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = study.sop_uid(instance)
    _identify(ds, patient, study, "NM", "NM WHOLE BODY BONE SCAN")
    ds.ImageType = ["DERIVED", "PRIMARY", "WHOLE BODY", "EMISSION"]  # as the real pydicom-data NM1 scan
    ds.SeriesDescription = "WB BONE" + (
        " ANT" if views == ["anterior"] else " POST" if views == ["posterior"] else ""
    )
    if image_comments:
        ds.ImageComments = image_comments
    ds.InstanceNumber = instance
    ds.BodyPartExamined = "WHOLEBODY"
    ds.PatientPosition = "HFS"
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    ds.LossyImageCompression = "00"
    scan_length = frames.shape[1] * pixel_spacing
    ds.ScanLength = round(scan_length)
    ds.ScanVelocity = f"{scan_length / 1200.0:.3f}"  # mm/s: a 20-minute whole-body pass
    ds.WholeBodyTechnique = ["1PS"]
    ds.ActualFrameDuration = 1_200_000
    ds.CountsAccumulated = int(frames.astype(np.int64).sum())
    ds.NumberOfFrames = n
    ds.FrameIncrementPointer = 0x00540020  # DetectorVector
    ds.DetectorVector = list(range(1, n + 1))
    ds.NumberOfDetectors = n
    ds.EnergyWindowVector = [1] * n
    ds.NumberOfEnergyWindows = 1
    window = Dataset()
    limits = Dataset()
    limits.EnergyWindowLowerLimit, limits.EnergyWindowUpperLimit = "126", "154"  # 140 keV +/- 10 %
    window.EnergyWindowRangeSequence = DicomSequence([limits])
    window.EnergyWindowName = "Tc99m"
    ds.EnergyWindowInformationSequence = DicomSequence([window])
    detectors = []
    for view in views:
        item = Dataset()
        item.CollimatorGridName, item.CollimatorType = "LEHR", "PARA"
        item.FieldOfViewShape, item.FieldOfViewDimensions = "RECTANGLE", [540, 400]
        item.ZoomFactor = [1.0, 1.0]
        if view is not None:
            item.ViewCodeSequence = DicomSequence([_code(*VIEW_CODES[view])])
        detectors.append(item)
    ds.DetectorInformationSequence = DicomSequence(detectors)
    pharm = Dataset()
    pharm.Radiopharmaceutical = "Tc-99m MDP"
    pharm.RadiopharmaceuticalRoute = "IV"
    pharm.RadiopharmaceuticalStartTime = f"{study.injection:%H%M%S}"
    pharm.RadiopharmaceuticalStartDateTime = f"{study.injection:%Y%m%d%H%M%S}"
    pharm.RadionuclideTotalDose = f"{study.dose_mbq:.1f}"
    pharm.RadionuclideHalfLife = "21624"  # s, Tc-99m
    pharm.RadionuclideCodeSequence = DicomSequence([_code(*TC99M)])
    pharm.RadiopharmaceuticalCodeSequence = DicomSequence([_code(*MEDRONATE)])
    pharm.AdministrationRouteCodeSequence = DicomSequence([_code(*INTRAVENOUS)])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence([pharm])
    ds.PixelSpacing = [f"{pixel_spacing:.4f}", f"{pixel_spacing:.4f}"]
    ds.PhotometricInterpretation = "MONOCHROME2"
    _pixels(ds, frames)
    _file_meta(ds)
    return ds


def make_radiograph_dataset(
    brightness: np.ndarray,
    patient: PatientIdentity,
    study: StudyIdentity,
    *,
    modality: str = "CR",
    monochrome1: bool = False,
    rescale: tuple[float, float] = (1.0, 0.0),
    view_position: str = "PA",
    pixel_spacing: float = 1.5625,
) -> Dataset:
    """A CR or DX (for presentation) chest radiograph dataset from display brightness in [0, 1].

    Stored values SV satisfy slope * SV + intercept = 4095 * b (MONOCHROME2) or 4095 * (1 - b)
    (MONOCHROME1), so a reader that applies the Modality LUT and then inverts MONOCHROME1 gets the
    same picture back whatever the photometric interpretation and rescale.

    Args:
        brightness: (H, W) float in [0, 1], bright = dense (MONOCHROME2 sense).
        modality: "CR" or "DX".
        monochrome1: store inverted, PhotometricInterpretation MONOCHROME1.
        rescale: (slope, intercept) of the Modality LUT.
    """
    if modality not in ("CR", "DX"):
        raise ValueError(f"modality must be CR or DX, got {modality!r}")
    slope, intercept = rescale
    output = 4095.0 * (1.0 - brightness if monochrome1 else brightness)
    stored = np.rint((output - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError(f"rescale {rescale} maps the image outside unsigned 16 bits")
    stored = stored.astype(np.uint16)
    ds = Dataset()
    ds.SOPClassUID = CR_IMAGE_STORAGE if modality == "CR" else DX_IMAGE_STORAGE
    ds.SOPInstanceUID = study.sop_uid(1)
    _identify(ds, patient, study, modality, "XR CHEST 1 VIEW")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesDescription = f"CHEST {view_position}"
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.ViewCodeSequence = DicomSequence([_code(*CHEST_VIEW_CODES[view_position])])
    ds.PatientOrientation = ["L", "F"] if view_position == "PA" else ["R", "F"]
    ds.KVP, ds.ExposureTime, ds.XRayTubeCurrent = "120", 12, 250
    ds.DistanceSourceToDetector = "1800"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = -1 if monochrome1 else 1
        ds.ImagerPixelSpacing = [f"{pixel_spacing:.4f}", f"{pixel_spacing:.4f}"]
    ds.PixelSpacing = [f"{pixel_spacing:.4f}", f"{pixel_spacing:.4f}"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{intercept:g}", f"{slope:g}", "US"
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    _pixels(ds, stored[None], bits_stored=12 if int(stored.max()) < 4096 else 16)
    _file_meta(ds)
    return ds


def _feasible_syntax(syntax: str, size: tuple[int, int]) -> str:
    """JPEG 2000 -> RLE for views too small for openjpeg's fixed 6 resolution levels (tiny test cohorts)."""
    return "rle" if syntax == "jpeg2000" and min(size) < J2K_MIN_SIDE else syntax


def _encode(ds: Dataset, syntax: str) -> Dataset:
    """Compress in place (pydicom 3 encoders: native RLE, pylibjpeg-openjpeg for JPEG 2000 lossless).

    Lossless, so the SOP Instance UID stays (pydicom would otherwise mint a random one: not reproducible).
    """
    if syntax == "explicit":
        return ds
    codec_log = logging.getLogger("openjpeg.encode")  # logs every tile at INFO; keep the CLI output readable
    level = codec_log.level
    codec_log.setLevel(max(level, logging.WARNING))
    try:
        ds.compress(SYNTAX_UIDS[syntax], generate_instance_uid=False)
    finally:
        codec_log.setLevel(level)
    return ds


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------- cohort plan


def _allocate(n: int, proportions: dict[str, float], rng: np.random.Generator) -> list[str]:
    """n items split by largest remainder (every category present once n allows), in shuffled order."""
    names = list(proportions)
    quota = np.array([proportions[k] for k in names], dtype=float) * n
    counts = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(names)):  # a category with a positive share appears at least once if n allows
        if counts[i] == 0 and proportions[names[i]] > 0 and n >= len(names):
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    items = [name for name, c in zip(names, counts, strict=True) for _ in range(c)]
    return [items[i] for i in rng.permutation(n)]


@dataclass(frozen=True)
class PlannedStudy:
    """One study to write: who, which class, how it is stored."""

    cohort: str  # "bone" or "chest"
    patient: int
    study: int  # 0 = first study of the patient
    accession_index: int
    label: str
    representation: str  # bone: multiframe | two_instances | side_by_side; chest: CR | DX
    syntax: str  # explicit | rle | jpeg2000


@dataclass(frozen=True)
class CohortPlan:
    """Labels and storage choices for the whole cohort, decided before any pixel is drawn (cheap)."""

    bone_labels: tuple[str, ...]  # per patient
    bone: tuple[PlannedStudy, ...]
    chest: tuple[PlannedStudy, ...]


def plan_cohort(cfg: PhantomConfig) -> CohortPlan:
    """Patient labels in cfg.class_proportions, 1-3 studies each, mixed representations and syntaxes."""
    rng = _rng(cfg.seed, "plan")
    unknown = set(cfg.class_proportions) - set(BONE_CLASSES)
    if unknown:
        raise ValueError(f"class_proportions has classes the phantom cannot draw: {sorted(unknown)}")
    labels = _allocate(cfg.patients, cfg.class_proportions, rng)
    lo, hi = cfg.studies_per_patient
    if not 1 <= lo <= hi:
        raise ValueError(f"studies_per_patient must satisfy 1 <= min <= max, got {cfg.studies_per_patient}")
    if not 0 < cfg.counts_per_view[0] <= cfg.counts_per_view[1]:
        raise ValueError(f"counts_per_view must satisfy 0 < min <= max, got {cfg.counts_per_view}")
    per_patient = rng.integers(lo, hi + 1, size=cfg.patients)
    n_bone = int(per_patient.sum())
    representations = _allocate(n_bone, REPRESENTATIONS, rng)
    syntaxes = _allocate(n_bone, BONE_SYNTAXES, rng)
    bone, k = [], 0
    for patient, (label, count) in enumerate(zip(labels, per_patient, strict=True)):
        for study in range(int(count)):
            bone.append(PlannedStudy("bone", patient, study, k, label, representations[k], syntaxes[k]))
            k += 1
    chest_labels = _allocate(cfg.chest_patients, {c: 1 / len(CHEST_CLASSES) for c in CHEST_CLASSES}, rng)
    modalities = _allocate(cfg.chest_patients, {"CR": 0.5, "DX": 0.5}, rng)
    chest_syntaxes = _allocate(cfg.chest_patients, CHEST_SYNTAXES, rng)
    chest = tuple(
        PlannedStudy("chest", i, 0, i, chest_labels[i], modalities[i], chest_syntaxes[i])
        for i in range(cfg.chest_patients)
    )
    return CohortPlan(tuple(labels), tuple(bone), chest)


# --------------------------------------------------------------------------- separability check

STATISTIC_NAMES = ("mean", "std", "p50", "p90", "p99", "p99.9", "max")


def global_statistics(image: np.ndarray) -> np.ndarray:
    """Whole-image statistics a trivial classifier could use: per view mean, std, percentiles, max.

    Args:
        image: (H, W) or (V, H, W) counts (a study's views).
    Returns:
        (V * 7,) float64, log1p-transformed (count statistics span orders of magnitude).
    """
    views = np.asarray(image, dtype=np.float64)
    views = views.reshape(-1, *views.shape[-2:])
    stats = []
    for view in views:
        p50, p90, p99, p999 = np.percentile(view, [50, 90, 99, 99.9])
        stats += [view.mean(), view.std(), p50, p90, p99, p999, view.max()]
    return np.log1p(np.array(stats))


def separability_of_features(
    features: np.ndarray,
    labels: Sequence[str],
    seed: int,
    groups: Sequence[int] | None = None,
    folds: int = 5,
) -> dict:
    """Cross-validated logistic regression on global statistics vs. the trivial baselines.

    Accuracy is compared with always predicting the majority class; balanced accuracy (with
    class-balanced weights, so a minority class cannot be ignored) with 1 / number of classes.
    `groups` (patient per sample) keeps a patient's studies in one fold.
    """
    # Imported here: rendering workers import this module and never need scikit-learn (seconds to import).
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    # Folds must leave every class (and, with groups, a patient of every class) on both sides of a split.
    per_class = (
        counts if groups is None else np.array([len(set(np.asarray(groups)[y == c])) for c in classes])
    )
    k = int(min(folds, per_class.min())) if len(classes) > 1 else 0
    result = {
        "n": int(len(y)),
        "features": [f"{view}_{name}" for view in ("anterior", "posterior") for name in STATISTIC_NAMES][
            : x.shape[1]
        ],
        "folds": k,
        "majority_baseline": float(counts.max() / counts.sum()) if len(y) else 0.0,
        "chance_balanced": float(1.0 / max(len(classes), 1)),
    }
    if k < 2:
        result.update(accuracy=None, balanced_accuracy=None, accuracy_margin=None, balanced_margin=None)
        return result
    if groups is not None:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        split = list(splitter.split(x, y, np.asarray(groups)))
    else:
        split = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y))
    plain = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    balanced = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    accuracy = accuracy_score(y, cross_val_predict(plain, x, y, cv=split))
    balanced_accuracy = balanced_accuracy_score(y, cross_val_predict(balanced, x, y, cv=split))
    result.update(
        accuracy=float(accuracy),
        balanced_accuracy=float(balanced_accuracy),
        accuracy_margin=float(accuracy - result["majority_baseline"]),
        balanced_margin=float(balanced_accuracy - result["chance_balanced"]),
    )
    return result


def global_statistic_separability(
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    seed: int,
    groups: Sequence[int] | None = None,
    folds: int = 5,
) -> dict:
    """`separability_of_features` on `global_statistics` of each image ((H, W) or (V, H, W) study)."""
    return separability_of_features(
        np.stack([global_statistics(im) for im in images]), labels, seed, groups, folds
    )


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class StudyRecord:
    """A written study (relative paths contain PHI: never log or report them)."""

    accession: str
    label: str
    patient: int
    representation: str
    syntax: str
    files: tuple[str, ...]  # relative to the cohort directory
    counts: tuple[int, ...] = ()  # bone: total counts of (anterior, posterior)
    findings: tuple[str, ...] = ()


@dataclass(frozen=True)
class BadFile:
    """A deliberately broken input; `accession` is set when labels.csv lists it (burned-in)."""

    kind: str
    path: str
    accession: str | None = None


@dataclass(frozen=True)
class CohortSummary:
    """What `write_cohort` wrote. `report()` is the PHI-free part saved as phantom_report.json."""

    out_dir: Path
    seed: int
    bone_patients: int
    chest_patients: int
    bone: tuple[StudyRecord, ...]
    chest: tuple[StudyRecord, ...]
    bad_files: tuple[BadFile, ...]
    separability: dict
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def bone_class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.label for s in self.bone).items()))

    @property
    def chest_class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.label for s in self.chest).items()))

    def report(self) -> dict:
        """Aggregates only: no names, IDs, accession numbers or paths (deterministic for a seed)."""
        counts = np.array([c for s in self.bone for c in s.counts], dtype=float)
        return {
            "seed": self.seed,
            "bone": {
                "patients": self.bone_patients,
                "studies": len(self.bone),
                "files": sum(len(s.files) for s in self.bone),
                "classes": self.bone_class_counts,
                "patient_classes": dict(
                    sorted(Counter({s.patient: s.label for s in self.bone}.values()).items())
                ),
                "representations": dict(sorted(Counter(s.representation for s in self.bone).items())),
                "transfer_syntaxes": dict(sorted(Counter(s.syntax for s in self.bone).items())),
                "counts_per_view": {
                    "min": float(counts.min()) if counts.size else 0.0,
                    "median": float(np.median(counts)) if counts.size else 0.0,
                    "max": float(counts.max()) if counts.size else 0.0,
                },
            },
            "chest": {
                "patients": self.chest_patients,
                "studies": len(self.chest),
                "classes": self.chest_class_counts,
                "modalities": dict(sorted(Counter(s.representation for s in self.chest).items())),
                "transfer_syntaxes": dict(sorted(Counter(s.syntax for s in self.chest).items())),
            },
            "bad_files": {"count": len(self.bad_files), "kinds": sorted(b.kind for b in self.bad_files)},
            "global_statistic_separability": self.separability,
        }


def _bone_datasets(
    views: BoneViews,
    plan: PlannedStudy,
    patient: PatientIdentity,
    study: StudyIdentity,
    burned_in: bool = False,
) -> list[Dataset]:
    """The study's instances in its representation: (a) one 2-frame, (b) two 1-frame, (c) side by side."""
    ant, post = views.anterior, views.posterior
    common = {"pixel_spacing": views.pixel_spacing, "burned_in": burned_in}
    if plan.representation == "multiframe":
        return [make_nm_dataset(np.stack([ant, post]), ["anterior", "posterior"], patient, study, **common)]
    if plan.representation == "two_instances":
        return [
            make_nm_dataset(
                ant[None], ["anterior"], patient, study, instance=1, image_comments="ANT", **common
            ),
            make_nm_dataset(
                post[None], ["posterior"], patient, study, instance=2, image_comments="POST", **common
            ),
        ]
    if plan.representation == "side_by_side":
        both = np.concatenate([ant, post], axis=1)[None]
        return [make_nm_dataset(both, [None], patient, study, image_comments="ANT POST", **common)]
    raise ValueError(f"unknown representation {plan.representation!r}")


def _burn_in(views: BoneViews, seed: int) -> BoneViews:
    """Draw text-like annotation blocks (name/date lines) into the top-left corner of both views."""
    rng = _rng(seed, "burned-in")
    out = []
    for view in (views.anterior, views.posterior):
        img = view.copy()
        h, w = img.shape
        glyph = max(2, h // 200)
        level = np.uint16(min(int(np.percentile(view, 99.9)) * 2 + 10, 65535))
        for line in range(3):
            y = 2 * glyph + line * 3 * glyph
            for k in range(int(rng.integers(6, 12))):
                if rng.random() < 0.8:
                    x = glyph + k * 2 * glyph
                    img[y : y + 2 * glyph, x : min(x + glyph + int(rng.integers(0, 2)), w)] = level
        out.append(img)
    return replace(views, anterior=out[0], posterior=out[1])


_NM_ONLY = (
    "RadiopharmaceuticalInformationSequence",
    "DetectorInformationSequence",
    "EnergyWindowInformationSequence",
    "WholeBodyTechnique",
    "FrameIncrementPointer",
    "DetectorVector",
    "NumberOfDetectors",
    "EnergyWindowVector",
    "NumberOfEnergyWindows",
    "NumberOfFrames",
    "ScanLength",
    "ScanVelocity",
    "ActualFrameDuration",
    "CountsAccumulated",
)


def _write_bad_files(
    cfg: PhantomConfig, bone_dir: Path, out_dir: Path
) -> tuple[list[BadFile], list[tuple[str, str]]]:
    """One file of each broken kind in BAD_KINDS, each under its own fake patient's export folder."""
    bad, labels = [], []
    small = (max(cfg.bone_size[0] // 4, 64), max(cfg.bone_size[1] // 4, 16))
    for index, kind in enumerate(BAD_KINDS):
        patient = sample_patient_identity(cfg.seed, "bad", index)
        study = sample_study_identity(cfg.seed, "bad", index, 0, index)
        path = bone_dir / patient.folder / study.folder / "IMG00001.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = _rng(cfg.seed, "bad-pixels", index)
        label = str(rng.choice(BONE_CLASSES))
        accession = None
        if kind == "not_dicom":  # a thumbnail PNG saved under a .dcm name by an export tool
            buffer = io.BytesIO()
            Image.fromarray((rng.random((32, 8)) * 255).astype(np.uint8)).save(buffer, format="PNG")
            path.write_bytes(buffer.getvalue())
        elif kind == "unsupported_modality":
            ds = make_nm_dataset(rng.poisson(50.0, (1, 64, 64)).astype(np.uint16), [None], patient, study)
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            ds.Modality, ds.ImageType = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
            for keyword in _NM_ONLY:
                del ds[keyword]
            ds.SliceThickness, ds.KVP, ds.ConvolutionKernel = "5.0", "120", "STANDARD"
            ds.StudyDescription = ds.ProtocolName = ds.RequestAttributesSequence[
                0
            ].RequestedProcedureDescription = "CT THORAX"
            _save(ds, path)
        else:
            views = render_bone_study(rng, label, cfg.model_copy(update={"bone_size": small}))
            plan = PlannedStudy("bad", index, 0, index, label, "multiframe", "explicit")
            if kind == "burned_in":
                views = _burn_in(views, cfg.seed)
                accession = study.accession
                labels.append((study.accession, label))
            ds = _bone_datasets(views, plan, patient, study, burned_in=kind == "burned_in")[0]
            if kind == "no_pixel_data":  # e.g. a workstation's dose/summary object with image headers
                del ds.PixelData
            _save(ds, path)
            if kind == "truncated":  # transfer aborted half-way through the pixel data
                data = path.read_bytes()
                path.write_bytes(data[: len(data) - len(views.anterior.tobytes())])
        bad.append(BadFile(kind, path.relative_to(out_dir).as_posix(), accession))
    return bad, labels


def _write_labels(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fp:
        writer = csv.writer(fp, lineterminator="\n")
        writer.writerow(["accession_number", "label"])
        writer.writerows(sorted(rows))


@dataclass(frozen=True)
class _WrittenStudy:
    """What writing one bone study returns to `write_cohort` (small and picklable: no pixels)."""

    record: StudyRecord
    features: np.ndarray  # (14,) global statistics of (anterior, posterior)
    truth: tuple[tuple, ...]  # ground-truth rows: one per lesion, or one with an empty `lesion`
    render_s: float
    write_s: float


def _by_patient(studies: Sequence[PlannedStudy]) -> list[tuple[PlannedStudy, ...]]:
    """The plan's studies grouped per patient (each group in plan order, groups by first appearance)."""
    groups: dict[int, list[PlannedStudy]] = {}
    for item in studies:
        groups.setdefault(item.patient, []).append(item)
    return [tuple(group) for group in groups.values()]


def _write_patient(cfg: PhantomConfig, out_dir: Path, studies: Sequence[PlannedStudy]) -> list[_WrittenStudy]:
    """Render and write one patient's bone studies in order; later studies reuse the first one's body and
    findings, so a patient is the unit of work a worker process gets (all draws come from its own streams).
    """
    first = studies[0]
    if first.study != 0:
        raise ValueError(f"bone patient {first.patient}: studies must start with study 0, got {first.study}")
    anatomy_rng = _rng(cfg.seed, "bone-anatomy", first.patient)
    body = sample_body(anatomy_rng)
    findings = sample_findings(body, first.label, anatomy_rng)
    patient = sample_patient_identity(cfg.seed, "bone", first.patient)
    last: date | None = None
    written = []
    for item in studies:
        t0 = time.perf_counter()
        study_rng = _rng(cfg.seed, "bone-acquisition", item.patient, item.study)
        if item.study > 0:
            findings = progress_findings(findings, study_rng, body)
        acquisition = sample_acquisition(body, study_rng, cfg.counts_per_view)
        views = render_study(body, findings, acquisition, cfg.bone_size, study_rng)
        study = sample_study_identity(cfg.seed, "bone", item.patient, item.study, item.accession_index, last)
        last = study.when.date()
        t1 = time.perf_counter()
        files = []
        syntax = _feasible_syntax(item.syntax, cfg.bone_size)
        for number, ds in enumerate(_bone_datasets(views, item, patient, study), start=1):
            path = out_dir / "bone" / patient.folder / study.folder / f"IMG{number:05d}.dcm"
            _save(_encode(ds, syntax), path)
            files.append(path.relative_to(out_dir).as_posix())
        t2 = time.perf_counter()
        counts = (int(views.anterior.sum(dtype=np.int64)), int(views.posterior.sum(dtype=np.int64)))
        record = StudyRecord(
            study.accession, item.label, item.patient, item.representation, syntax, tuple(files), counts,
            findings.kinds,
        )  # fmt: skip
        rows, cols = crop_box(views.anterior.astype(np.float32), BODY_THRESHOLD, 0.0)
        key = (str(study.study_uid), study.accession, item.label, int(findings.superscan),
               round(views.pixel_spacing, 4), *cfg.bone_size, rows.stop - rows.start, cols.stop - cols.start)  # fmt: skip
        lesions = lesion_records(views, body, cfg.bone_size)
        truth = [(*key, i, *(le[f] for f in LESION_FIELDS)) for i, le in enumerate(lesions)]
        truth += [(*key, "", *[""] * len(LESION_FIELDS))] if not lesions else []
        features = global_statistics(np.stack([views.anterior, views.posterior]))
        written.append(_WrittenStudy(record, features, tuple(truth), t1 - t0, t2 - t1))
    return written


def _worker_died(studies: Sequence[PlannedStudy]) -> list[_WrittenStudy]:
    """A phantom that kills its worker (out of memory, a codec crash) is a bug to see, not data to skip."""
    raise RuntimeError(
        f"a phantoms worker process died rendering bone patient {studies[0].patient} (again when run "
        "alone); set phantoms.workers: 1 to render in this process and see the error"
    )


def _write_bone_studies(cfg: PhantomConfig, plan: CohortPlan, out_dir: Path, timing: Counter) -> tuple:
    """Render and write every planned bone study, a patient per task in `cfg.workers` processes.

    Results are put back in plan order, so the files, labels and ground truth do not depend on the
    number of workers.

    Returns:
        (records, (accession, label) rows, per-study global statistics, patient per study,
        ground-truth rows: one per lesion, or one with an empty `lesion` for a study without any).
    """
    patients = _by_patient(plan.bone)
    workers = min(cfg.workers, len(patients))
    write = partial(_write_patient, cfg, out_dir.resolve())  # workers get absolute paths
    if workers > 1:  # a patient is about a second of work: one per task balances best and costs little
        per_patient = ordered_map(
            write,
            patients,
            workers=workers,
            chunksize=1,
            on_crash=_worker_died,
            workers_key="phantoms.workers",
        )
    else:
        per_patient = map(write, patients)
    done = {
        (item.patient, item.study): result
        for group, results in zip(patients, per_patient, strict=True)
        for item, result in zip(group, results, strict=True)
    }
    bone_records, bone_labels, features, groups, truth = [], [], [], [], []
    for result in (done[item.patient, item.study] for item in plan.bone):  # plan order, whatever the workers
        bone_records.append(result.record)
        bone_labels.append((result.record.accession, result.record.label))
        features.append(result.features)
        groups.append(result.record.patient)
        truth += result.truth
        timing["bone_render"] += result.render_s  # summed over studies: process time, not wall time
        timing["bone_write"] += result.write_s
    return bone_records, bone_labels, features, groups, truth


def _write_ground_truth(path: Path, rows: list[tuple]) -> None:
    with path.open("w", newline="") as fp:
        writer = csv.writer(fp, lineterminator="\n")
        writer.writerow(GROUND_TRUTH_COLUMNS)
        writer.writerows(rows)


def _write_chest_studies(cfg: PhantomConfig, plan: CohortPlan, out_dir: Path) -> tuple:
    """Render and write the chest-radiograph source cohort: CR and DX, some MONOCHROME1, some rescaled.

    Returns:
        (records, (accession, label) rows).
    """
    chest_dir = out_dir / "chest"
    chest_records, chest_labels = [], []
    for item in plan.chest:
        rng = _rng(cfg.seed, "chest-image", item.patient)
        brightness = render_chest(rng, item.label, cfg.chest_size)
        patient = sample_patient_identity(cfg.seed, "chest", item.patient)
        study = sample_study_identity(cfg.seed, "chest", item.patient, 0, item.accession_index)
        style = _rng(cfg.seed, "chest-style", item.patient)
        monochrome1 = bool(style.random() < 0.35)
        rescale = [(1.0, 0.0), (0.5, 0.0), (2.0, -1024.0), (1.0, -1024.0)][
            int(style.choice(4, p=[0.55, 0.15, 0.15, 0.15]))
        ]
        spacing = CHEST_FOV_MM / max(cfg.chest_size)
        view = "AP" if style.random() < 0.15 else "PA"
        ds = make_radiograph_dataset(
            brightness,
            patient,
            study,
            modality=item.representation,
            monochrome1=monochrome1,
            rescale=rescale,
            view_position=view,
            pixel_spacing=spacing,
        )
        path = chest_dir / patient.folder / study.folder / "IMG00001.dcm"
        _save(_encode(ds, item.syntax), path)
        rel = path.relative_to(out_dir).as_posix()
        chest_records.append(
            StudyRecord(study.accession, item.label, item.patient, item.representation, item.syntax, (rel,))
        )
        chest_labels.append((study.accession, item.label))
    return chest_records, chest_labels


def write_cohort(cfg: PhantomConfig, out_dir: Path) -> CohortSummary:
    """Write the synthetic cohort under `out_dir` (bone/, chest/, ground_truth.csv, phantom_report.json).

    Existing out_dir/bone and out_dir/chest are replaced, so a cohort never mixes two seeds.
    Returns the summary, including the global-statistic separability check on the bone studies.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    bone_dir, chest_dir = out_dir / "bone", out_dir / "chest"
    for old in (bone_dir, chest_dir):
        if old.exists():
            shutil.rmtree(old)
    plan = plan_cohort(cfg)
    timing = Counter()

    t0 = time.perf_counter()
    bone_records, bone_labels, features, groups, truth = _write_bone_studies(cfg, plan, out_dir, timing)
    timing["bone"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chest_records, chest_labels = _write_chest_studies(cfg, plan, out_dir)
    timing["chest"] = time.perf_counter() - t0

    bad: list[BadFile] = []
    if cfg.bad_files:
        t0 = time.perf_counter()
        bad, bad_labels = _write_bad_files(cfg, bone_dir, out_dir)
        bone_labels += bad_labels
        timing["bad_files"] = time.perf_counter() - t0
    _write_labels(bone_dir / "labels.csv", bone_labels)
    _write_ground_truth(out_dir / GROUND_TRUTH, truth)
    if chest_records:
        _write_labels(chest_dir / "labels.csv", chest_labels)

    t0 = time.perf_counter()
    separability = (
        separability_of_features(np.stack(features), [r.label for r in bone_records], cfg.seed, groups)
        if features
        else {}
    )
    timing["separability"] = time.perf_counter() - t0
    timing["total"] = time.perf_counter() - started
    summary = CohortSummary(
        out_dir,
        cfg.seed,
        cfg.patients,
        cfg.chest_patients,
        tuple(bone_records),
        tuple(chest_records),
        tuple(bad),
        separability,
        {k: round(v, 3) for k, v in timing.items()},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "phantom_report.json").write_text(
        json.dumps(summary.report(), indent=2, sort_keys=True) + "\n"
    )
    log.info(
        "phantom cohort: %d bone studies (%s), %d chest studies, %d bad files in %.1f s; global-statistic "
        "accuracy %s vs. majority %.3f",
        len(bone_records),
        summary.bone_class_counts,
        len(chest_records),
        len(bad),
        timing["total"],
        None if separability.get("accuracy") is None else f"{separability['accuracy']:.3f}",
        separability.get("majority_baseline", 0.0),
    )
    return summary
