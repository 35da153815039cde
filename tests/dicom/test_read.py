"""Specification of the reader: decoding, view naming, crop, intensity scaling, resize, PNG output."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bonescan.config import IngestConfig
from bonescan.dicom.bombs import write_deflate_bomb, write_rle_bomb
from bonescan.dicom.read import (
    ANTERIOR,
    DEFAULT_MAX_PIXEL_BYTES,
    POSTERIOR,
    SINGLE,
    ImageReadError,
    View,
    check_pixel_data,
    crop_box,
    declared_pixel_bytes,
    decode_frames,
    preprocess_view,
    read_dicom,
    read_png16,
    read_views,
    resize_pad,
    scale_intensity,
    write_png16,
)

CFG = IngestConfig()
GPL_DECODER = importlib.util.find_spec("libjpeg") is not None  # the optional `bonescan[gpl-decoders]`
REAL_BONE_SCANS = [
    "JPEG2000.dcm",
    pytest.param(  # 12-bit JPEG Extended: only the GPL decoder reads it (pydicom bars GDCM from it)
        "JPGExtended.dcm", marks=pytest.mark.skipif(not GPL_DECODER, reason="needs bonescan[gpl-decoders]")
    ),
    "JPEG2000_UNC.dcm",
]
# Decoded by the default install (no GPL code): pydicom (RLE), pylibjpeg-openjpeg, python-gdcm.
DEFAULT_SYNTAX_FILES = [
    "MR_small_RLE.dcm",  # RLE Lossless
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline (Process 1)
    "JPEG-LL.dcm",  # JPEG Lossless, Process 14 SV1 (the bone scan)
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS
]
_WITHOUT_GPL = """
import hashlib, importlib.metadata, json, sys
_entry_points = importlib.metadata.entry_points
def entry_points(**kw):  # as if pylibjpeg-libjpeg were not installed: no module, no plugin entry points
    found = _entry_points(**kw)
    return importlib.metadata.EntryPoints(e for e in found if not e.value.startswith("libjpeg"))
importlib.metadata.entry_points = entry_points
sys.modules["libjpeg"] = None
from pydicom.data import get_testdata_file
from bonescan.dicom.read import ImageReadError, read_views
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = hashlib.sha256(read_views(get_testdata_file(name), split=False)[0].pixels.tobytes()).hexdigest()
    except ImageReadError as exc:
        out[name] = exc.reason
print(json.dumps(out))
"""


def body(
    height: int = 128, width: int = 32, counts: float = 2e5, seed: int = 0, top: float = 0.1
) -> np.ndarray:
    """A crude whole-body emission image: head, trunk, two legs, Poisson noise; rows `top`..0.9 of the height."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    span = 0.9 - top
    head = ((yy - (top + 0.05 * span)) / (0.05 * span)) ** 2 + ((xx - 0.5) / 0.12) ** 2 < 1
    trunk = (yy > top + 0.1 * span) & (yy < top + 0.5 * span) & (np.abs(xx - 0.5) < 0.25)
    legs = (yy >= top + 0.5 * span) & (yy < 0.9) & (np.abs(np.abs(xx - 0.5) - 0.1) < 0.06)
    activity = 1.0 * head + 1.0 * trunk + 0.8 * legs
    return rng.poisson(activity / activity.sum() * counts).astype(np.uint16)


def nm_dataset(frames: np.ndarray, **attrs) -> Dataset:
    """A minimal NM dataset holding `frames` ((H, W) or (F, H, W) uint16) plus the given attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "NM"
    ds.PixelSpacing = [2.26, 2.26]
    ds.set_pixel_data(frames, "MONOCHROME2", 16)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def detector(meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = "G-A117" if meaning.startswith("ant") else "G-A118"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = meaning
    item = Dataset()
    item.ViewCodeSequence = [code]
    return item


# --------------------------------------------------------------------------- real bone scans


@pytest.mark.parametrize("name", REAL_BONE_SCANS)
def test_real_whole_body_bone_scan_decodes_to_one_anterior_view_in_counts(name):
    views = read_views(get_testdata_file(name), split=True)
    assert [v.name for v in views] == [ANTERIOR]  # a lone uncoded whole-body frame is taken as anterior
    pixels = views[0].pixels
    assert pixels.shape == (1024, 256) and pixels.dtype == np.float32
    assert pixels.min() >= 0  # lossy undershoot clipped: counts are never negative
    assert 200 <= pixels.max() <= 300 and np.median(pixels) <= 2
    assert 3.0e6 < pixels.sum() < 4.5e6  # ~3.5 M counts, as acquired (CountsAccumulated 3,596,452)
    assert views[0].spacing == (2.26, 2.26)


def test_jpeg2000_scan_and_its_uncompressed_copy_decode_to_the_same_counts():
    compressed = read_views(get_testdata_file("JPEG2000.dcm"), split=True)[0].pixels
    uncompressed = read_views(get_testdata_file("JPEG2000_UNC.dcm"), split=True)[0].pixels
    np.testing.assert_array_equal(compressed, uncompressed)


@pytest.mark.parametrize("name", REAL_BONE_SCANS)
def test_crop_of_real_scan_keeps_the_body_from_head_to_feet(name):
    pixels = read_views(get_testdata_file(name), split=True)[0].pixels
    rows, cols = crop_box(pixels, CFG.crop_threshold, CFG.crop_margin)
    # Head starts near row 75 and the feet end near row 860 of 1024 (1.8 m at 2.26 mm/pixel).
    assert 30 <= rows.start <= 90 and 850 <= rows.stop <= 910
    assert cols.stop - cols.start >= 0.9 * 256  # arms span the whole field of view
    assert pixels[rows, cols].sum() >= 0.98 * pixels.sum()  # nothing of the body is cut away


def test_non_conformant_jpeg_is_rejected_with_a_decode_reason_not_a_crash():
    with pytest.raises(ImageReadError) as info:
        read_views(get_testdata_file("JPEG-lossy.dcm"), split=True)
    assert info.value.code == "decode_error"
    assert info.value.reason.startswith("cannot decode JPEG Extended (Process 2 and 4) pixel data")


def test_default_install_decodes_rle_jpeg2000_jpeg_baseline_lossless_and_ls_without_gpl_code():
    names = [*DEFAULT_SYNTAX_FILES, "JPGExtended.dcm"]
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _WITHOUT_GPL, *names], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    for name in DEFAULT_SYNTAX_FILES:
        reference = read_views(get_testdata_file(name), split=False)[0].pixels  # whatever this env has
        assert got[name] == hashlib.sha256(reference.tobytes()).hexdigest(), name
    assert "bonescan[gpl-decoders]" in got["JPGExtended.dcm"]  # refused with the way out named


def test_real_scan_preprocesses_to_a_padded_full_range_image():
    view = read_views(get_testdata_file("JPEG2000_UNC.dcm"), split=True)[0]
    image = preprocess_view(view, CFG, (256, 96))
    assert image.shape == (256, 96) and image.dtype == np.float32
    assert image.min() == 0.0 and image.max() == pytest.approx(1.0, abs=0.01)
    columns = np.flatnonzero(image.max(axis=0) > 0)
    assert 70 <= columns.size <= 85  # cropped view ~825 x 252 px -> 256 x ~78, padded to 96
    assert image[:, : columns[0]].max() == 0 and image[:, columns[-1] + 1 :].max() == 0


# --------------------------------------------------------------------------- decoding


def test_modality_lut_rescale_is_applied():
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4)
    ds = nm_dataset(stored, RescaleSlope=2, RescaleIntercept=-5, Modality="CR")
    np.testing.assert_array_equal(decode_frames(ds)[0], 2.0 * stored - 5)


def test_monochrome1_is_inverted_so_that_bright_means_more_signal():
    stored = np.array([[0, 100], [4000, 4095]], dtype=np.uint16)
    ds = nm_dataset(stored, Modality="CR")
    ds.set_pixel_data(stored, "MONOCHROME1", 12)
    np.testing.assert_array_equal(decode_frames(ds)[0], [[4095, 3995], [95, 0]])


def test_monochrome1_inversion_uses_the_rescaled_range():
    stored = np.array([[0, 1023]], dtype=np.uint16)
    ds = nm_dataset(stored, Modality="DX", RescaleSlope=2, RescaleIntercept=10)
    ds.set_pixel_data(stored, "MONOCHROME1", 10)
    np.testing.assert_array_equal(decode_frames(ds)[0], [[2056, 10]])  # range [10, 2056] flipped


def test_dataset_without_pixel_data_is_rejected():
    ds = nm_dataset(body())
    del ds.PixelData
    with pytest.raises(ImageReadError) as info:
        read_views(ds, split=True)
    assert (info.value.code, info.value.reason) == ("no_pixel_data", "no pixel data")


def test_truncated_pixel_data_is_rejected_as_truncated(tmp_path):
    path = tmp_path / "cut.dcm"
    nm_dataset(body()).save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(ImageReadError) as info:
        read_views(path, split=True)
    assert info.value.code == "truncated" and info.value.reason.startswith("truncated / unreadable")


# --------------------------------------------------------------------------- decompression bombs


def peak_traced_bytes(fn) -> int:
    """Peak Python/numpy heap while `fn()` runs (numpy and bytearray allocations are traced)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_rle_file_of_one_kilobyte_declaring_60000_by_60000_is_refused_before_decoding(tmp_path):
    path = write_rle_bomb(tmp_path / "bomb.dcm")
    assert path.stat().st_size < 2000
    caught = []

    def read():
        with pytest.raises(ImageReadError) as exc:
            read_views(path, split=True)
        caught.append(exc.value)

    peak = peak_traced_bytes(read)
    assert caught[0].code == "too_large"
    assert "60000 x 60000" in caught[0].reason and "ingest.max_pixel_bytes" in caught[0].reason
    assert peak < 20 * 2**20  # nothing near the 6.7 GiB the header asks for was allocated


@pytest.mark.parametrize(
    "name",
    [
        "liver_1frame.dcm",  # Explicit VR Little Endian, 1-bit (unpacked to one byte per pixel)
        "MR_small_RLE.dcm",  # RLE Lossless
        "JPEG2000.dcm",  # JPEG 2000, the real whole-body bone scan
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline, 3 samples
        "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    ],
)
def test_pixel_ceiling_is_the_decoded_size_and_holds_for_every_transfer_syntax(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    declared = declared_pixel_bytes(ds)
    assert declared == ds.pixel_array.nbytes  # the ceiling measures what a decoder allocates
    ds = pydicom.dcmread(get_testdata_file(name))  # fresh: nothing decoded yet
    with pytest.raises(ImageReadError) as exc:
        check_pixel_data(ds, max_bytes=declared - 1)
    assert exc.value.code == "too_large"
    assert decode_frames(ds, max_bytes=declared).shape[-2:] == (ds.Rows, ds.Columns)


def test_multi_frame_count_counts_towards_the_ceiling():
    ds = nm_dataset(np.zeros((2, 64, 64), dtype=np.uint16))
    ds.NumberOfFrames = 2_000_000  # 16 GB declared; the native data is short too, but the size is named
    with pytest.raises(ImageReadError) as exc:
        check_pixel_data(ds)
    assert exc.value.code == "too_large" and "2000000 frame(s)" in exc.value.reason


def test_deflated_file_inflating_past_the_ceiling_is_refused_while_reading(tmp_path):
    path = write_deflate_bomb(tmp_path / "deflated.dcm", 40 * 2**20)
    assert path.stat().st_size < 200_000  # 40 MiB of zeros deflate ~1000:1
    caught = []

    def read():
        with pytest.raises(ImageReadError) as exc:
            read_dicom(path, max_bytes=2**20)  # inflated limit: 1 MiB + 16 MiB for the header
        caught.append(exc.value)

    peak = peak_traced_bytes(read)
    assert caught[0].code == "too_large" and "deflated" in caught[0].reason
    assert "ingest.max_pixel_bytes" in caught[0].reason
    assert peak < 8 * 2**20  # inflated in pieces and dropped, never held whole


def test_deflated_file_within_the_ceiling_reads_as_before(tmp_path):
    path = write_deflate_bomb(tmp_path / "deflated.dcm", 2 * 2**20, columns=256)
    ds = read_dicom(path, max_bytes=2 * 2**20)
    frames = decode_frames(ds, max_bytes=2 * 2**20)
    assert frames.shape == (1, 4096, 256) and not frames.any()
    real = read_views(get_testdata_file("image_dfl.dcm"), split=False)
    assert real[0].pixels.shape == (512, 512)


def test_default_ceiling_admits_a_whole_body_study_and_a_large_radiograph():
    study = 1024 * 256 * 2 * 2  # two 16-bit 1024 x 256 frames
    radiograph = 8000 * 8000 * 2  # 16-bit
    assert 64 * study <= DEFAULT_MAX_PIXEL_BYTES and radiograph <= DEFAULT_MAX_PIXEL_BYTES


def test_image_file_over_the_ceiling_is_refused_from_its_header(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 200), dtype=np.uint8)).save(path)
    with pytest.raises(ImageReadError) as exc:
        read_views(path, split=False, max_bytes=100 * 200 - 1)
    assert exc.value.code == "too_large" and "200 x 100" in exc.value.reason
    assert read_views(path, split=False, max_bytes=100 * 200)[0].pixels.shape == (100, 200)


# --------------------------------------------------------------------------- views


def test_two_frames_are_named_by_detector_view_codes_through_detector_vector():
    ant, post = body(seed=1), body(seed=2, counts=1e5)
    ds = nm_dataset(
        np.stack([post, ant]),
        DetectorInformationSequence=[detector("anterior projection"), detector("posterior projection")],
        DetectorVector=[2, 1],  # frame 1 comes from detector 2 (posterior)
        FrameIncrementPointer=0x00540020,
    )
    views = {v.name: v.pixels for v in read_views(ds, split=True)}
    assert set(views) == {ANTERIOR, POSTERIOR}
    np.testing.assert_array_equal(views[ANTERIOR], ant)
    np.testing.assert_array_equal(views[POSTERIOR], post)


def test_two_uncoded_frames_follow_the_text_else_frame_order():
    frames = np.stack([body(seed=1), body(seed=2)])
    assert [v.name for v in read_views(nm_dataset(frames), split=True)] == [ANTERIOR, POSTERIOR]
    reversed_text = nm_dataset(frames, ImageComments="POST ANT")
    assert [v.name for v in read_views(reversed_text, split=True)] == [POSTERIOR, ANTERIOR]


def test_one_coded_frame_names_the_other_frame_too():
    ds = nm_dataset(
        np.stack([body(seed=1), body(seed=2)]),
        DetectorInformationSequence=[detector("posterior projection"), Dataset()],
        DetectorVector=[1, 2],
    )
    assert [v.name for v in read_views(ds, split=True)] == [POSTERIOR, ANTERIOR]


def test_more_than_two_uncoded_frames_are_rejected():
    ds = nm_dataset(np.stack([body(seed=s) for s in range(3)]))
    with pytest.raises(ImageReadError, match="3 frames without view codes"):
        read_views(ds, split=True)


def test_separate_instances_each_yield_their_own_named_view():
    coded = nm_dataset(body(seed=1), DetectorInformationSequence=[detector("posterior projection")])
    commented = nm_dataset(body(seed=2), ImageComments="WB POST 15cm/min", SeriesDescription="WB ANT POST")
    described = nm_dataset(body(seed=3), SeriesDescription="Whole body ANT")
    assert [v.name for v in read_views(coded, split=True)] == [POSTERIOR]
    assert [v.name for v in read_views(commented, split=True)] == [
        POSTERIOR
    ]  # instance text beats series text
    assert [v.name for v in read_views(described, split=True)] == [ANTERIOR]


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.concatenate([left, right], axis=1)  # (128, 64): twice as wide as one whole-body view


@pytest.mark.parametrize(
    ("comment", "left_name"), [("ANT POST", ANTERIOR), ("POST ANT", POSTERIOR), (None, ANTERIOR)]
)
def test_side_by_side_views_are_split_at_the_gap_and_named_left_to_right(comment, left_name):
    left, right = body(seed=1), body(seed=2, counts=1e5)
    ds = nm_dataset(side_by_side(left, right), **({"ImageComments": comment} if comment else {}))
    views = read_views(ds, split=True)
    assert [v.name for v in views] == [left_name, POSTERIOR if left_name == ANTERIOR else ANTERIOR]
    assert views[0].pixels.sum() == pytest.approx(left.sum(), rel=0.02)
    assert views[1].pixels.sum() == pytest.approx(right.sum(), rel=0.02)


def test_one_wide_centred_body_is_not_split():
    wide = np.zeros((128, 64), dtype=np.uint16)
    wide[:, 8:56] = body(width=48)
    assert [v.name for v in read_views(nm_dataset(wide), split=True)] == [ANTERIOR]


def test_split_false_yields_one_single_view_per_frame():
    ds = nm_dataset(side_by_side(body(seed=1), body(seed=2)), ImageComments="ANT POST")
    views = read_views(ds, split=False)
    assert [v.name for v in views] == [SINGLE] and views[0].pixels.shape == (128, 64)


def test_image_files_are_read_as_grey_values(tmp_path):
    rgb = np.zeros((20, 10, 3), dtype=np.uint8)
    rgb[5:15, 2:8] = (200, 200, 200)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(tmp_path / "y.png")
    (tmp_path / "z.png").write_bytes(b"not a png")
    (x,) = read_views(tmp_path / "x.png", split=False)
    (y,) = read_views(tmp_path / "y.png", split=False)
    assert x.name == SINGLE and x.pixels.shape == (20, 10) and x.pixels.max() == 200
    assert y.pixels.max() == 40000  # 16-bit PNGs keep their depth
    with pytest.raises(ImageReadError, match="truncated / unreadable"):
        read_views(tmp_path / "z.png", split=False)


# --------------------------------------------------------------------------- crop, scale, resize, PNG


def test_crop_keeps_the_whole_synthetic_body_and_drops_empty_field_and_specks():
    pixels = np.zeros((256, 64), dtype=np.float32)
    pixels[:, 16:48] = body(height=256, top=0.2)
    pixels[5:7, 2:4] = 50  # a hot speck far from the body (contamination) must not widen the crop
    rows, cols = crop_box(pixels, threshold=0.02, margin=0.0)
    body_rows = np.flatnonzero(pixels[:, 16:48].sum(axis=1) > 0)
    assert rows.start <= body_rows[0] + 2 and rows.stop >= body_rows[-1] - 2  # head to feet
    assert rows.start >= 0.15 * 256 and rows.stop <= 0.95 * 256  # empty field above the head is gone
    assert cols.start >= 16 and cols.stop <= 48


def test_crop_margin_widens_the_box_by_a_fraction_of_the_view():
    pixels = np.zeros((100, 50), dtype=np.float32)
    pixels[40:60, 20:30] = 100
    tight = crop_box(pixels, 0.02, 0.0)
    loose = crop_box(pixels, 0.02, 0.1)
    assert loose[0].start == tight[0].start - 10 and loose[0].stop == tight[0].stop + 10
    assert loose[1].start == tight[1].start - 5 and loose[1].stop == tight[1].stop + 5


def test_blank_view_is_rejected():
    with pytest.raises(ImageReadError, match="blank image"):
        crop_box(np.zeros((64, 16), dtype=np.float32), 0.02, 0.02)


def test_intensity_scaling_maps_the_percentile_to_one_and_saturates_above():
    pixels = np.arange(1000, dtype=np.float32).reshape(40, 25)
    scaled = scale_intensity(pixels, 90.0)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert (scaled == 1.0).sum() == pytest.approx(100, abs=2)
    np.testing.assert_allclose(scaled[0, :5], np.arange(5) / np.percentile(pixels, 90.0), rtol=1e-5)


@pytest.mark.parametrize(("shape", "content"), [((200, 50), (100, 25)), ((50, 200), (25, 100))])
def test_resize_keeps_aspect_ratio_and_zero_pads_centred(shape, content):
    image = np.ones(shape, dtype=np.float32)
    out = resize_pad(image, (100, 100))
    rows, cols = np.flatnonzero(out.max(axis=1) > 0), np.flatnonzero(out.max(axis=0) > 0)
    assert out.shape == (100, 100)
    assert (rows.size, cols.size) == content
    assert rows[0] == (100 - content[0]) // 2 and cols[0] == (100 - content[1]) // 2
    assert out.max() == pytest.approx(1.0)


def test_resize_respects_anisotropic_pixel_spacing():
    out = resize_pad(np.ones((100, 100), dtype=np.float32), (100, 100), spacing=(1.0, 0.5))
    assert np.flatnonzero(out.max(axis=0) > 0).size == 50  # 100 mm tall, 50 mm wide


def test_posterior_view_is_mirrored_and_anterior_is_not():
    pixels = np.zeros((64, 32), dtype=np.float32)
    pixels[8:56, 4:12] = 10.0  # body on the left
    pixels[8:56, 12:28] = 5.0
    size = (64, 32)
    anterior = preprocess_view(View(ANTERIOR, pixels), CFG, size)
    posterior = preprocess_view(View(POSTERIOR, pixels), CFG, size)
    np.testing.assert_allclose(posterior, anterior[:, ::-1], atol=1e-6)
    unmirrored = preprocess_view(
        View(POSTERIOR, pixels), CFG.model_copy(update={"mirror_posterior": False}), size
    )
    np.testing.assert_allclose(unmirrored, anterior, atol=1e-6)


def test_png16_round_trip_keeps_sixteen_bits(tmp_path):
    image = np.linspace(0, 1, 64 * 16, dtype=np.float32).reshape(64, 16)
    path = write_png16(image, tmp_path / "out" / "a.png")
    with Image.open(path) as img:
        assert img.mode == "I;16" and img.size == (16, 64)
    np.testing.assert_allclose(read_png16(path), image, atol=1 / 65535)
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def test_reading_never_modifies_the_file(tmp_path):
    path = tmp_path / "study.dcm"
    nm_dataset(body()).save_as(path, enforce_file_format=True)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    read_views(path, split=True)
    pydicom.dcmread(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_view_hints_from_the_original_text_name_views_of_an_anonymized_copy():
    anonymized = nm_dataset(body())  # ImageComments / SeriesDescription removed by anonymization
    assert [v.name for v in read_views(anonymized, split=True, hints=[POSTERIOR])] == [POSTERIOR]
    pair = nm_dataset(side_by_side(body(seed=1), body(seed=2)))
    assert [v.name for v in read_views(pair, split=True, hints=[POSTERIOR, ANTERIOR])] == [
        POSTERIOR,
        ANTERIOR,
    ]


def test_reader_returns_views_or_a_reason_for_every_real_dicom_file(corpus_path):
    """Over pydicom's, pydicom-data's and deid-data's files: finite views, or ImageReadError — never a crash."""
    try:
        views = read_views(corpus_path, split=False)
    except ImageReadError as exc:
        assert exc.reason and exc.code
        return
    assert views and all(v.pixels.ndim == 2 and v.pixels.dtype == np.float32 for v in views)
    assert all(np.isfinite(v.pixels).all() for v in views)


def test_crop_box_is_within_a_few_pixels_of_the_body_on_views_of_any_size():
    pixels = np.zeros((515, 131), dtype=np.float32)  # not a multiple of the 2 x 2 masking blocks
    pixels[101:401, 31:97] = np.random.default_rng(0).poisson(20.0, (300, 66))
    rows, cols = crop_box(pixels, threshold=0.02, margin=0.0)
    # 2 x 2 blocks, smoothed with sigma 1 block: the mask reaches ~2 blocks past the edge at 2 %
    assert 0 <= 101 - rows.start <= 6 and 0 <= rows.stop - 401 <= 6
    assert 0 <= 31 - cols.start <= 6 and 0 <= cols.stop - 97 <= 6
