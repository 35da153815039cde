"""Decompression bombs: small DICOM files whose headers declare (or whose streams inflate to) gigabytes.

For the reader's ceiling tests and `benchmarks/bombs.py`. Every file is written with bounded memory
(the deflated one is compressed in 1 MiB pieces), carries no identity, and is a Modality NM
whole-body-looking header, so ingest and predict reach their pixel checks.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

_CHUNK = 2**20


def _nm_header(rows: int, columns: int, frames: int = 1, accession: str = "BOMB") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.20"  # NM Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "NM"
    ds.PatientID = "BOMB"
    ds.PatientName = "Bomb^Test"
    ds.AccessionNumber = accession
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def write_rle_bomb(path: str | Path, rows: int = 60000, columns: int = 60000, accession: str = "BOMB") -> Path:
    """A ~1 kB RLE Lossless file declaring rows x columns 16-bit pixels (6.7 GiB at the defaults)."""
    ds = _nm_header(rows, columns, accession=accession)
    header = np.zeros(16, dtype="<u4")
    header[:3] = [2, 64, 66]  # two segments (high and low byte) and their offsets
    ds.PixelData = encapsulate([header.tobytes() + b"\x81\x00" * 2])  # each segment: 128 zeros
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def write_declared_size_bomb(
    path: str | Path, testdata_name: str, rows: int = 60000, columns: int = 60000
) -> Path:
    """One of pydicom's small compressed test files with its Rows/Columns rewritten (stream unchanged)."""
    ds = dcmread(get_testdata_file(testdata_name))
    ds.Rows, ds.Columns = rows, columns
    ds.Modality, ds.AccessionNumber = "NM", "BOMB"  # reaches the pixel checks of ingest and predict
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def write_deflate_bomb(
    path: str | Path,
    inflated_bytes: int,
    rows: int | None = None,
    columns: int = 4096,
    accession: str = "BOMB",
) -> Path:
    """A Deflated Explicit VR Little Endian file whose data set inflates to about `inflated_bytes`.

    The pixel data is zeros, native 16-bit, `rows` x `columns` (rows derived from `inflated_bytes`
    when None), so the file is also a valid image that far; zlib's ~1000:1 on zeros makes 1 GiB
    inflate from ~1 MiB.
    """
    rows = rows or max(1, inflated_bytes // (2 * columns))
    frames = 1
    while rows > 65535:  # Rows is US: spread the size over frames
        frames, rows = frames * 2, -(-rows // 2)
    ds = _nm_header(rows, columns, frames, accession=accession)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)  # header only: no PixelData yet
    buffer.seek(0)
    read_preamble(buffer, False)
    _read_file_meta_info(buffer)
    head = buffer.getvalue()[: buffer.tell()]
    body = zlib.decompress(buffer.read(), -zlib.MAX_WBITS)
    pixel_bytes = rows * columns * frames * 2
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as fp:
        fp.write(head)
        fp.write(compressor.compress(body))
        fp.write(compressor.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)))
        zeros = bytes(_CHUNK)
        left = pixel_bytes
        while left > 0:
            fp.write(compressor.compress(zeros[: min(left, _CHUNK)]))
            left -= _CHUNK
        fp.write(compressor.flush())
    return Path(path)
