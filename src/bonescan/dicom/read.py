"""One reader for every input: DICOM (any transfer syntax pydicom decodes) or PNG/JPEG -> named views.

`read_views` returns the views of one file as float32 arrays in the modality's physical units (counts
for NM), after pydicom's Modality LUT and MONOCHROME1 inversion. A whole-body bone study reaches us in
three shapes and all become an "anterior" and a "posterior" view:

* one instance with two frames, named per frame by DetectorVector -> DetectorInformationSequence
  ViewCodeSequence;
* separate single-frame instances per view, named by their ViewCodeSequence or by ANT/POST words in
  ImageComments / SeriesDescription / ImageType;
* anterior and posterior side by side in one image, found by its width and the empty gap between them.

`preprocess_view` turns a view into a model input: crop to the body (head to feet), mirror the posterior
view so the patient's left lies on the same side as in the anterior view, scale by a high percentile
to [0, 1] (a hot bladder or injection site saturates instead of darkening the skeleton) and resize
keeping the aspect ratio with zero padding. `write_png16` stores the result losslessly in 16 bits.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGExtended12Bit
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.transform import resize

from bonescan.config import IngestConfig, Size

log = logging.getLogger(__name__)

ANTERIOR, POSTERIOR, SINGLE = "anterior", "posterior", "single"
COUNT_MODALITIES = frozenset({"NM", "PT"})  # pixel values are photon counts: never negative
_OTHER = {ANTERIOR: POSTERIOR, POSTERIOR: ANTERIOR}
_VIEW_WORDS = {"ANT": ANTERIOR, "ANTERIOR": ANTERIOR, "POST": POSTERIOR, "POSTERIOR": POSTERIOR}
_SIDE_BY_SIDE_ASPECT = 1.5 / 4  # width/height above which one image may hold two whole-body views
_GAP_FRACTION = 0.25  # a column this empty (vs. both halves' peaks) separates two side-by-side views
_TRUNCATED = "truncated / unreadable: pixel data shorter than its header states"
_MIN_COMPONENT = 0.05  # body parts smaller than this fraction of the largest one are noise/specks
# Decompression-bomb ceiling on the declared decoded pixel data (Rows x Columns x frames x samples x
# bytes per sample). 128 MiB holds 64 whole-body bone studies (1024 x 256 x 2 frames x 16 bits = 1 MiB)
# or a 16-bit 8000 x 8000 radiograph; reading a file at the ceiling peaks near 0.7 GB of RSS (float32
# views plus the stored array; benchmarks/bombs.py), so a bomb costs a worker at most that.
DEFAULT_MAX_PIXEL_BYTES = 128 * 2**20
# A deflated data set may inflate to the pixel ceiling plus this much for everything but pixels.
_NON_PIXEL_ALLOWANCE = 16 * 2**20
_INFLATE_CHUNK = 2**20  # bytes of inflated output held at once while measuring a deflated data set
_LIMIT_NAME = "ingest.max_pixel_bytes"  # the params.yaml key that sets the ceiling


class ImageReadError(ValueError):
    """A file cannot become views.

    Attributes:
        code: short machine-readable cause (for per-reason counts).
        reason: human-readable cause, safe to write to quarantine.csv (never contains patient data).
    """

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class View:
    """One projection of a study.

    Attributes:
        name: "anterior", "posterior" or "single".
        pixels: (H, W) float32 in the modality's units (counts for NM), MONOCHROME2 sense (bright = more).
        spacing: (row, column) pixel spacing in mm when known; keeps the physical aspect ratio on resize.
    """

    name: str
    pixels: np.ndarray
    spacing: tuple[float, float] | None = None


# --------------------------------------------------------------------------- decoding


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def max_file_bytes(max_pixel_bytes: int) -> int:
    """The largest file that can hold pixel data within `max_pixel_bytes`: that plus the header allowance.

    Native pixel data is stored at its decoded size and every codec stores less, so a larger file is
    refused unread (a 1 x 1 image may carry a 50 GB PixelData element that pydicom would read whole).
    """
    return max_pixel_bytes + _NON_PIXEL_ALLOWANCE


def read_dicom(path: str | Path, max_bytes: int | None = DEFAULT_MAX_PIXEL_BYTES) -> Dataset:
    """Read a DICOM file without modifying it (opened read-only).

    A Deflated Explicit VR Little Endian file is inflated once first, in 1 MiB pieces that are
    counted and dropped, so a small file that inflates to gigabytes is refused before pydicom
    inflates it in one piece.

    Args:
        max_bytes: ceiling on the declared decoded pixel data (see `check_pixel_data`); a deflated
            data set may inflate to this plus 16 MiB. None: no ceiling.

    Raises:
        ImageReadError: ("too_large") a deflated data set inflates past the ceiling.
        pydicom.errors.InvalidDicomError, and what pydicom raises for damaged files.
    """
    with open(path, "rb") as fp:
        if max_bytes is not None:
            _check_inflated_size(fp, max_file_bytes(max_bytes))
            fp.seek(0)
        return pydicom.dcmread(fp)


def _check_inflated_size(fp, limit: int) -> None:
    """Refuse a deflated data set whose inflated size exceeds `limit`; memory stays ~1 MiB."""
    try:
        read_preamble(fp, False)
        syntax = _read_file_meta_info(fp).get("TransferSyntaxUID")
    except Exception:  # noqa: BLE001 - not ours to judge: dcmread reports damaged headers itself
        return
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while chunk := fp.read(_INFLATE_CHUNK):
            while chunk:
                total += len(inflater.decompress(chunk, _INFLATE_CHUNK))
                if total > limit:
                    raise ImageReadError(
                        "too_large",
                        f"deflated data set inflates to more than {_mib(limit)} "
                        f"(limit {_LIMIT_NAME} + {_mib(_NON_PIXEL_ALLOWANCE)} for the header)",
                    )
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                return
    except zlib.error:
        return  # a corrupt stream: dcmread raises for it, and it cannot inflate past what we read


def decode_frames(ds: Dataset, max_bytes: int | None = DEFAULT_MAX_PIXEL_BYTES) -> np.ndarray:
    """Pixel data -> (F, H, W) float32 after the Modality LUT and MONOCHROME1 inversion.

    Args:
        max_bytes: ceiling on the declared decoded pixel data, checked before decoding (see
            `check_pixel_data`); None: no ceiling.

    Raises:
        ImageReadError: no pixel data, pixel data larger than the ceiling or shorter than its header
            promises, or a codec failure.
    """
    check_pixel_data(ds, max_bytes)
    try:
        stored = ds.pixel_array
    except Exception as exc:  # the codecs raise a variety of types; all mean "cannot decode"
        raise _decode_error(ds, exc) from None
    frames_n = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    values = apply_modality_lut(stored, ds).astype(np.float32, copy=False)
    if samples > 1:  # colour secondary captures: luminance, which is what a grey-scale model sees
        values = rgb2gray(values).astype(np.float32)
    values = values.reshape((frames_n, *values.shape[-2:]))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        low, high = _output_range(ds)
        values = (low + high) - values  # MONOCHROME1: high values are dark; flip within the LUT's range
    if str(ds.get("Modality", "")).upper() in COUNT_MODALITIES:
        np.maximum(values, 0, out=values)  # lossy codecs undershoot around hot spots; counts are >= 0
    return values


def declared_pixel_bytes(ds: Dataset) -> int | None:
    """Bytes the decoded pixel data will take, from the header alone; None when it cannot be told.

    Rows x Columns x NumberOfFrames x SamplesPerPixel x bytes per sample, where a sample takes its
    BitsAllocated rounded up to whole bytes (pydicom unpacks 1-bit data to one byte per pixel).
    """
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        frames = max(1, int(ds.get("NumberOfFrames") or 1))
        samples = max(1, int(ds.get("SamplesPerPixel") or 1))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return rows * columns * frames * samples * max(1, -(-bits // 8))


def check_pixel_data(ds: Dataset, max_bytes: int | None = DEFAULT_MAX_PIXEL_BYTES) -> None:
    """Cheap integrity check before any real work (nothing is decoded).

    Pixel data present; its declared decoded size (`declared_pixel_bytes`) within `max_bytes`, for
    every transfer syntax (a 1 kB RLE stream may declare 60000 x 60000 pixels, which its decoder
    would allocate up front); and, for native syntaxes, not cut short.

    Args:
        max_bytes: ceiling in bytes (params.yaml `ingest.max_pixel_bytes`); None: no ceiling.

    Raises:
        ImageReadError: no pixel data, no transfer syntax, declared size over the ceiling
            ("too_large"), or fewer pixel bytes than the header states.
    """
    if "PixelData" not in ds:
        raise ImageReadError("no_pixel_data", "no pixel data")
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is None:
        raise ImageReadError("unreadable", "truncated / unreadable: no Transfer Syntax UID in the file meta")
    declared = declared_pixel_bytes(ds)
    if max_bytes is not None and declared is not None and declared > max_bytes:
        shape = (
            f"{int(ds.Rows)} x {int(ds.Columns)} x {max(1, int(ds.get('NumberOfFrames') or 1))} frame(s)"
            f" x {max(1, int(ds.get('SamplesPerPixel') or 1))} sample(s) x {int(ds.BitsAllocated)} bits"
        )
        raise ImageReadError(
            "too_large",
            f"declared pixel data {_mib(declared)} ({shape}) exceeds the limit {_LIMIT_NAME} = {_mib(max_bytes)}",
        )
    if syntax.is_compressed:
        return  # encapsulated streams are checked by their codec
    try:
        short = len(ds.PixelData) < int(get_expected_length(ds))
    except (AttributeError, KeyError, TypeError, ValueError):
        return  # incomplete or ill-typed image attributes: decoding reports what is wrong
    if short:
        raise ImageReadError("truncated", _TRUNCATED)


def _output_range(ds: Dataset) -> tuple[float, float]:
    """Range of the Modality LUT's output over all storable values (data-independent inversion)."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0):
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    else:
        stored = np.array([0, 2**bits - 1], dtype=np.int64)
    ends = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    return float(ends.min()), float(ends.max())


def _gpl_jpeg_decoder_installed() -> bool:
    """pylibjpeg-libjpeg (GPL-3.0, the optional `bonescan[gpl-decoders]` extra) can be imported."""
    try:
        return importlib.util.find_spec("libjpeg") is not None
    except (ImportError, ValueError):  # a blocked or half-installed module
        return False


def _decode_error(ds: Dataset, exc: Exception) -> ImageReadError:
    syntax = ds.file_meta.TransferSyntaxUID
    message = str(exc)
    if "less than expected" in message or "shorter than" in message or isinstance(exc, EOFError):
        return ImageReadError("truncated", _TRUNCATED)
    if syntax == JPEGExtended12Bit and int(ds.get("BitsStored") or 8) > 8 and not _gpl_jpeg_decoder_installed():
        # GDCM (the default JPEG decoder) is barred by pydicom from 12-bit JPEG Extended
        return ImageReadError(
            "decode_error",
            f"cannot decode {syntax.name} pixel data: more than 8 bits per sample needs the optional "
            "GPL-3.0 decoder (pip install 'bonescan[gpl-decoders]', i.e. pylibjpeg-libjpeg)",
        )
    # Codec messages name the plugin and the stream fault, and "Missing required element" names a tag:
    # safe to keep, abridged. Other messages may quote element values (which could be identifying),
    # so only their type is kept.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if lines and lines[0].startswith("Unable to decode as exceptions were raised by all available plugins"):
        detail = "; ".join(" ".join(line.split())[:160] for line in lines[1:4])
    elif message.startswith("Missing required element"):
        detail = " ".join(message.split())[:120]
    else:
        detail = type(exc).__name__
    return ImageReadError("decode_error", f"cannot decode {syntax.name} pixel data ({detail})")


# --------------------------------------------------------------------------- views


def _view_from_meaning(meaning: str) -> str | None:
    text = meaning.lower()
    anterior, posterior = "anterior" in text, "posterior" in text
    if anterior != posterior:  # "postero-anterior" (a chest PA code) names no whole-body view
        return ANTERIOR if anterior else POSTERIOR
    return None


def _coded_view(item: Dataset) -> str | None:
    codes = item.get("ViewCodeSequence") or []
    return _view_from_meaning(str(codes[0].get("CodeMeaning", ""))) if len(codes) else None


def _frame_view_codes(ds: Dataset, n_frames: int) -> list[str | None]:
    """View of each frame from DetectorVector -> DetectorInformationSequence ViewCodeSequence."""
    detectors = [_coded_view(item) for item in ds.get("DetectorInformationSequence") or []]
    vector = ds.get("DetectorVector")
    if vector is None:
        indices = list(range(1, n_frames + 1)) if len(detectors) == n_frames else []
    else:
        indices = [int(v) for v in (vector if isinstance(vector, Sequence) else [vector])]
    names: list[str | None] = [None] * n_frames
    for frame, detector in enumerate(indices[:n_frames]):
        if 1 <= detector <= len(detectors):
            names[frame] = detectors[detector - 1]
    if n_frames == 1 and names[0] is None:  # CR/DX and some NM put the view code at the top level
        names[0] = _coded_view(ds)
    return names


def text_views(ds: Dataset) -> list[str]:
    """ANT/POST words of the most specific free text that has any (instance before series), in order.

    Anonymization removes ImageComments and SeriesDescription (PS3.15 action X), so callers that
    decode the anonymized copy take these hints from the original dataset first.
    """
    for keyword in ("ImageComments", "SeriesDescription", "ImageType"):
        value = ds.get(keyword)
        if value is None:
            continue
        text = (
            " ".join(map(str, value))
            if isinstance(value, Sequence) and not isinstance(value, str)
            else str(value)
        )
        found = [_VIEW_WORDS[w] for w in re.findall(r"[A-Za-z]+", text.upper()) if w in _VIEW_WORDS]
        ordered = [v for i, v in enumerate(found) if v not in found[:i]]
        if ordered:
            return ordered
    return []


def side_by_side_split(pixels: np.ndarray) -> int | None:
    """Column where two side-by-side views meet, or None when the image holds one body.

    The image must be wider than one whole-body view and have a near-empty column in its middle
    band with a body on each side (one centred body has its spine there, the opposite of a gap).
    """
    height, width = pixels.shape
    if width < 8:
        return None
    profile = ndimage.gaussian_filter1d(
        (pixels - pixels.min()).sum(axis=0, dtype=np.float64), sigma=max(1.0, width / 128)
    )
    lo, hi = int(0.3 * width), int(0.7 * width)
    column = lo + int(np.argmin(profile[lo:hi]))
    left, right = profile[:column].max(initial=0.0), profile[column:].max(initial=0.0)
    if min(left, right) <= 0 or profile[column] >= _GAP_FRACTION * min(left, right):
        return None
    return column


def split_views(
    frames: np.ndarray, coded: Sequence[str | None], text: Sequence[str]
) -> list[tuple[str, np.ndarray]]:
    """Name the whole-body views in (F, H, W) frames: codes, then text, then geometry, then frame order.

    Raises:
        ImageReadError: more than two frames without view codes (which frame is which is unknowable).
    """
    n_frames, height, width = frames.shape
    if n_frames > 1:
        if all(coded):
            return [(name, frame) for name, frame in zip(coded, frames, strict=True)]
        if n_frames > 2:
            raise ImageReadError(
                "unknown_views", f"{n_frames} frames without view codes: views cannot be told apart"
            )
        first, second = coded
        if first or second:  # one frame coded: the other is the other projection
            first, second = first or _OTHER[second], second or _OTHER[first]
        elif len(text) == 2:  # "POST ANT": frames in the order the text names them
            first, second = text
        else:  # frame order: anterior first
            first, second = ANTERIOR, POSTERIOR
        return [(first, frames[0]), (second, frames[1])]
    image = frames[0]
    if coded[0] is not None:
        return [(coded[0], image)]
    column = side_by_side_split(image) if (width >= _SIDE_BY_SIDE_ASPECT * height or len(text) == 2) else None
    if column is not None:
        left_name, right_name = (text[0], text[1]) if len(text) == 2 else (ANTERIOR, POSTERIOR)
        return [(left_name, image[:, :column]), (right_name, image[:, column:])]
    if len(text) == 1:
        return [(text[0], image)]
    log.debug("no view code, view word or second body: the lone whole-body frame is taken as anterior")
    return [(ANTERIOR, image)]


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        row, col = (float(s) for s in spacing)
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 else None


def dataset_views(
    ds: Dataset,
    split: bool,
    hints: Sequence[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_PIXEL_BYTES,
) -> list[View]:
    """Views of a decoded dataset. `split=False` -> every frame is one "single" view.

    Args:
        hints: view names from free text (`text_views` of the original, pre-anonymization dataset);
            None -> taken from `ds` itself.
        max_bytes: ceiling on the declared decoded pixel data (see `check_pixel_data`).
    """
    frames = decode_frames(ds, max_bytes)
    spacing = _spacing(ds)
    if not split:
        return [View(SINGLE, frame, spacing) for frame in frames]
    text = text_views(ds) if hints is None else list(hints)
    named = split_views(frames, _frame_view_codes(ds, frames.shape[0]), text)
    return [View(name, np.ascontiguousarray(pixels), spacing) for name, pixels in named]


def read_image_file(path: str | Path, max_bytes: int | None = DEFAULT_MAX_PIXEL_BYTES) -> np.ndarray:
    """A PNG/JPEG -> (H, W) float32 grey values (16-bit PNGs keep their 16 bits).

    Args:
        max_bytes: ceiling on the declared decoded size (width x height x bands x bytes per band),
            checked from the header before any pixel is decoded; None: no ceiling.

    Raises:
        ImageReadError: unreadable file, or declared size over the ceiling ("too_large").
    """
    try:
        with Image.open(path) as img:  # lazy: only the header is read here
            width, height = img.size
            band_bytes = 2 if img.mode.startswith("I;16") else 4 if img.mode in ("I", "F") else 1
            declared = width * height * len(img.getbands()) * band_bytes
            if max_bytes is not None and declared > max_bytes:
                raise ImageReadError(
                    "too_large",
                    f"declared image size {_mib(declared)} ({width} x {height}, mode {img.mode}) "
                    f"exceeds the limit {_LIMIT_NAME} = {_mib(max_bytes)}",
                )
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return np.asarray(img, dtype=np.float32)
            return np.asarray(img.convert("L"), dtype=np.float32)
    except ImageReadError:
        raise
    except Image.DecompressionBombError:  # Pillow's own ceiling (Image.MAX_IMAGE_PIXELS) struck first
        raise ImageReadError(
            "too_large", f"declared image size exceeds Pillow's limit of {2 * Image.MAX_IMAGE_PIXELS} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError("unreadable", f"truncated / unreadable image: {type(exc).__name__}") from None


def read_views(
    source: Dataset | str | Path,
    split: bool,
    hints: Sequence[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_PIXEL_BYTES,
) -> list[View]:
    """Views of one input: a pydicom Dataset, a DICOM path, or a PNG/JPEG path.

    Args:
        source: dataset or file path (suffix .png/.jpg/.jpeg/.bmp/.tif(f) -> image, anything else -> DICOM).
        split: True for whole-body studies (anterior/posterior), False for one view per frame ("single").
        hints: DICOM only: ANT/POST view names from the original free text (see `text_views`).
        max_bytes: decompression-bomb ceiling on the declared decoded pixel data, checked before any
            decode (params.yaml `ingest.max_pixel_bytes`); None: no ceiling.

    Raises:
        ImageReadError: the input cannot become views; code "too_large" when over the ceiling.
    """
    if isinstance(source, Dataset):
        return dataset_views(source, split, hints, max_bytes)
    path = Path(source)
    if path.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}:
        pixels = read_image_file(path, max_bytes)
        if not split:
            return [View(SINGLE, pixels)]
        return [View(name, np.ascontiguousarray(p)) for name, p in split_views(pixels[None], [None], [])]
    return dataset_views(read_dicom(path, max_bytes), split, hints, max_bytes)


# --------------------------------------------------------------------------- preprocessing


def body_mask(pixels: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (H, W) mask of the body: smoothed signal above `threshold` x robust maximum.

    Light Gaussian smoothing turns Poisson-noisy soft tissue into a connected region; the robust
    maximum (99.5th percentile of the smoothed image) ignores a single hot spot. Connected components
    smaller than 5 % of the largest are dropped (specks of scatter), but separate large parts (legs or
    arms detached at the threshold) are kept.
    """
    signal = pixels - pixels.min()
    smooth = ndimage.gaussian_filter(signal, sigma=max(1.0, min(signal.shape) / 128))
    robust_max = float(np.percentile(smooth, 99.5))
    if robust_max <= 0:
        return np.zeros(pixels.shape, dtype=bool)
    labels, n = ndimage.label(smooth > threshold * robust_max)
    if n == 0:
        return np.zeros(pixels.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= _MIN_COMPONENT * sizes.max()) + 1
    return np.isin(labels, keep)


def _block_sum(pixels: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) -> (ceil(H/f), ceil(W/f)) sums of f x f blocks (edge blocks zero-padded)."""
    height, width = pixels.shape
    padded = np.pad(pixels, ((0, -height % factor), (0, -width % factor)))
    rows, cols = padded.shape[0] // factor, padded.shape[1] // factor
    return padded.reshape(rows, factor, cols, factor).sum(axis=(1, 3))


def crop_box(pixels: np.ndarray, threshold: float, margin: float) -> tuple[slice, slice]:
    """Bounding box of the body mask, widened by `margin` x the view's size on every side.

    The mask is computed on f x f block sums (f = shorter side // 64, so ~64 blocks across): summing
    blocks is itself a denoising filter, and the box stays within ~2 blocks of the body (the reach of
    the smoothing at a 2 % threshold; 8 px of a 1024 x 256 view, inside the 20 px margin) at a
    sixteenth of the cost of masking at full resolution.

    Raises:
        ImageReadError: the view is blank (no signal above background).
    """
    factor = max(1, min(pixels.shape) // 64)
    signal = pixels - pixels.min()
    mask = body_mask(_block_sum(signal, factor) if factor > 1 else signal, threshold)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ImageReadError("blank", "blank image (no signal above background)")
    height, width = pixels.shape
    pad_r, pad_c = round(margin * height), round(margin * width)
    return (
        slice(max(0, rows[0] * factor - pad_r), min(height, (rows[-1] + 1) * factor + pad_r)),
        slice(max(0, cols[0] * factor - pad_c), min(width, (cols[-1] + 1) * factor + pad_c)),
    )


def scale_intensity(pixels: np.ndarray, percentile: float) -> np.ndarray:
    """Map [min, percentile] linearly to [0, 1], saturating above the percentile. Returns float32."""
    floor = float(pixels.min())
    top = float(np.percentile(pixels, percentile))
    if top <= floor:
        top = float(pixels.max())
    if top <= floor:
        return np.zeros(pixels.shape, dtype=np.float32)
    return np.clip((pixels - floor) / (top - floor), 0.0, 1.0).astype(np.float32)


def resize_pad(image: np.ndarray, size: Size, spacing: tuple[float, float] | None = None) -> np.ndarray:
    """Resize (H, W) to fit `size` = (H_out, W_out) keeping the (physical) aspect ratio; zero-pad, centred.

    Anti-aliased (Gaussian pre-filter) when shrinking, bilinear interpolation.
    """
    out_h, out_w = size
    height, width = image.shape
    row_mm, col_mm = spacing or (1.0, 1.0)
    phys_h, phys_w = height * row_mm, width * col_mm
    scale = min(out_h / phys_h, out_w / phys_w)
    new_h = min(out_h, max(1, round(phys_h * scale)))
    new_w = min(out_w, max(1, round(phys_w * scale)))
    resized = resize(image, (new_h, new_w), order=1, anti_aliasing=True, preserve_range=True, mode="edge")
    out = np.zeros((out_h, out_w), dtype=np.float32)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    out[top : top + new_h, left : left + new_w] = np.clip(resized, 0.0, None)
    return out


def preprocess_view(view: View, cfg: IngestConfig, size: Size) -> np.ndarray:
    """View -> (H, W) float32 in [0, 1]: crop to body, mirror posterior, scale, resize with padding."""
    rows, cols = crop_box(view.pixels, cfg.crop_threshold, cfg.crop_margin)
    pixels = view.pixels[rows, cols]
    if view.name == POSTERIOR and cfg.mirror_posterior:
        pixels = pixels[:, ::-1]
    scaled = scale_intensity(pixels, cfg.intensity_percentile)
    return np.clip(resize_pad(scaled, size, view.spacing), 0.0, 1.0)


def write_png16(image: np.ndarray, path: str | Path) -> Path:
    """Write a [0, 1] image as a 16-bit grayscale PNG, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(data).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def read_png16(path: str | Path) -> np.ndarray:
    """A PNG written by `write_png16` -> (H, W) float32 in [0, 1]."""
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.float32) / 65535.0
