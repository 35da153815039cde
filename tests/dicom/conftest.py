"""Fixtures for the DICOM tests: a real-file corpus, keys, and a tiny phantom cohort.

The corpus is every readable DICOM file shipped by pydicom (its bundled test files plus the
``pydicom-data`` package, which registers itself as an external source of
``pydicom.data.get_testdata_files``) and by ``deid-data`` (DX, CT, US, SC with fake identities).
Files above ``CORPUS_MAX_BYTES`` are left out so the conformance loop stays fast.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files

from bonescan.config import AnonymizeConfig
from bonescan.dicom.anonymize import Anonymizer

CORPUS_MAX_BYTES = 3_000_000  # skips the 7 MB CR scans, the 16 MB cat and the 43 MB cine loop


def _deid_data_files() -> list[Path]:
    try:
        import deid_data
    except ImportError:  # dev dependency; the pydicom part of the corpus still runs
        return []
    return sorted(Path(deid_data.__file__).parent.rglob("*.dcm"))


def _readable(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the corpus is whatever parses; the rest is not DICOM here
        return False
    return True


def corpus_paths() -> list[Path]:
    """Readable DICOM files of pydicom, pydicom-data and deid-data up to CORPUS_MAX_BYTES."""
    candidates = [Path(p) for p in get_testdata_files("**/*")] + _deid_data_files()
    return [p for p in candidates if p.is_file() and p.stat().st_size <= CORPUS_MAX_BYTES and _readable(p)]


_CORPUS = corpus_paths()


def _corpus_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``corpus_path`` parametrizes a test over every corpus file (ids: folder/name)."""
    if "corpus_path" in metafunc.fixturenames:
        metafunc.parametrize("corpus_path", _CORPUS, ids=[_corpus_id(p) for p in _CORPUS])


@pytest.fixture(scope="session")
def corpus() -> list[Path]:
    return list(_CORPUS)


@pytest.fixture(scope="session")
def secret() -> bytes:
    return b"bonescan-test-key-0123456789abcdef"


@pytest.fixture(scope="session")
def anon_cfg() -> AnonymizeConfig:
    return AnonymizeConfig()


@pytest.fixture(scope="session")
def anonymizer(secret: bytes, anon_cfg: AnonymizeConfig) -> Anonymizer:
    """Header de-identification of every corpus file: burned-in-prone sources (US, SC ...) pass too."""
    return Anonymizer(secret, anon_cfg, burned_in_policy="allow")


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny phantom cohort with PHI-bearing export paths and bad files."""
    phantom = pytest.importorskip("bonescan.dicom.phantom", reason="phantom cohort writer not available")
    from bonescan.config import PhantomConfig

    cfg = PhantomConfig(
        patients=6, chest_patients=2, bone_size=(128, 32), chest_size=(32, 32), seed=7, workers=1
    )
    out = tmp_path_factory.mktemp("phantoms")
    phantom.write_cohort(cfg, out)
    return out
