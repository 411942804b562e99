"""alta.data.render: OpenCV-equivalent equalisation, the three rendering modes, decoding of the real public DICOMs,
MONOCHROME1 handling, bit masking, resizing and the header whitelist (docs/data.md §2)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import make_dataset, ramp_image
from PIL import Image
from pydicom.dataset import Dataset

from alta.data import dicom_header, render
from alta.data.render import Reject

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def render_ds(ds: Dataset, mode: str = "mimic_jpg", colour: str = "luminance") -> np.ndarray:
    arr, info = render.decode_pixels(ds, colour=colour)
    return render.render(arr, ds, mode, info)


def real(name: str) -> Path:
    p = SHARED / "dicom" / name
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


# --- equalisation (OpenCV equalizeHist) -----------------------------------------------------------------------
def test_equalize_constant_image_maps_to_itself():
    img = np.full((8, 8), 77, np.uint8)
    assert (render.equalize_hist(img) == 77).all()


def test_equalize_two_values():
    img = np.array([[10] * 6 + [200] * 2] * 4, np.uint8)
    out = render.equalize_hist(img)
    assert set(np.unique(out)) == {0, 255}
    assert (out[img == 10] == 0).all() and (out[img == 200] == 255).all()


def test_equalize_lut_hand_computed():
    # values 0,1,2,3 once each: N - h(v0) = 3 -> 85, 170, 255
    lut = render.equalize_hist_lut(np.bincount([0, 1, 2, 3], minlength=256))
    assert lut[:4].tolist() == [0, 85, 170, 255]
    # 5 (x3), 9, 200: N - h(v0) = 2; lut(9) = round(127.5) = 128 (OpenCV rounds half to even), lut(200) = 255;
    # values below v0 map to 0 and values between keep the cumulative count
    lut = render.equalize_hist_lut(np.bincount([5, 5, 5, 9, 200], minlength=256))
    assert lut[0] == 0 and lut[4] == 0 and lut[5] == 0
    assert lut[9] == 128 and lut[100] == 128 and lut[200] == 255 and lut[255] == 255
    # 2 of 7 after v0 -> 255 * 2/7 = 72.857 -> 73
    lut = render.equalize_hist_lut(np.bincount([0, 0, 3, 4, 4, 4, 4, 4, 8], minlength=256))
    assert lut[3] == round(255 / 7) and lut[4] == round(255 * 6 / 7) and lut[8] == 255


def test_mimic_jpg_truncates_and_matches_elementwise_formula():
    rng = np.random.default_rng(0)
    raw = rng.integers(803, 26513, size=(64, 48)).astype(np.uint16)
    raw[0, 0], raw[0, 1] = 803, 26512
    d = raw.astype(np.float64) - 803
    x8 = ((d / d.max()) * 255).astype(np.uint8)
    expected = render.equalize_hist(255 - x8)
    for dtype in (np.uint16, np.int32, np.int16):  # the LUT path for each decoder dtype
        assert np.array_equal(render.render_mimic_jpg(raw.astype(dtype), monochrome1=True), expected)
        assert np.array_equal(render.render_mimic_jpg(raw.astype(dtype), False, equalize=False), x8)
    # 8-bit input takes the raw-value LUT too; a constant image maps to 0 before equalisation
    raw8 = rng.integers(3, 250, size=(40, 30)).astype(np.uint8)
    d8 = raw8.astype(np.float64) - raw8.min()
    assert np.array_equal(render.render_mimic_jpg(raw8, False, equalize=False),
                          ((d8 / d8.max()) * 255).astype(np.uint8))
    assert not render.render_mimic_jpg(np.full((5, 5), 9, np.uint16), False, equalize=False).any()
    # equalisation = the OpenCV LUT of the image's own histogram, applied per pixel
    assert np.array_equal(render.equalize_hist(x8), render.equalize_hist_lut(np.bincount(x8.ravel(), minlength=256))[x8])
    # the float path (huge ranges) gives the same result as the LUT path
    big = raw.astype(np.int64) * 1000
    assert np.array_equal(render.render_mimic_jpg(big, False, equalize=False),
                          ((((big - big.min()) / (big.max() - big.min())) * 255).astype(np.uint8)))


# --- the three public DICOMs ----------------------------------------------------------------------------------
def test_jpeg2000_monochrome1_renders_dark_lungs_upright():
    ds = render.read_dicom(real("wg04_RG1_J2KI.dcm"))
    assert dicom_header.transfer_syntax(ds) == "1.2.840.10008.1.2.4.91"
    arr, info = render.decode_pixels(ds)
    assert info.monochrome1 and not info.bits_masked and arr.shape == (1955, 1841)
    img = render.render(arr, ds, "mimic_jpg", info).astype(float)
    h, w = img.shape

    def band(r0, r1, c0, c1):
        return img[int(r0 * h):int(r1 * h), int(c0 * w):int(c1 * w)].mean()

    lungs = (band(.2, .45, .2, .35) + band(.2, .45, .65, .8)) / 2
    assert band(.25, .6, .45, .55) > lungs + 60, "mediastinum/spine must be brighter than the lungs"
    assert lungs < 100, "lungs must be dark (MONOCHROME1 inverted)"
    assert band(.75, .9, .1, .35) > lungs + 60, "abdomen below the lungs: the image must not be upside down"
    assert band(.85, 1, 0, 1) > band(0, .1, 0, 1)
    small = render.resize_short_side(img.astype(np.uint8), 512)
    assert small.shape == (544, 512)


def test_jpeg_baseline_and_implicit_vr_decode():
    ds = render.read_dicom(real("siim_sample.dcm"))
    assert dicom_header.transfer_syntax(ds) == "1.2.840.10008.1.2.4.50"
    out = render_ds(ds)
    assert out.shape == (1024, 1024) and out.dtype == np.uint8 and out.max() == 255
    row = dicom_header.header_row(ds)
    assert row["ViewPosition"] == "PA" and row["Modality"] == "CR" and row["BitsStored"] == 8

    ds = render.read_dicom(real("nih-cxr14_sample.dcm"))
    assert dicom_header.transfer_syntax(ds) == "1.2.840.10008.1.2"
    assert render_ds(ds, "reference_rsna").shape == (1024, 1024)
    row = dicom_header.header_row(ds)
    assert row["ViewPosition"] is None and row["StudyDate"] is None and row["Modality"] == "DX"


def test_check_decoders():
    real_syntaxes = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91",
                     "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"}
    assert render.check_decoders(real_syntaxes) == set()
    assert render.check_decoders({"1.2.3.4.5"}) == {"1.2.3.4.5"}


def test_check_decoders_fails_loudly_without_backend(monkeypatch):
    import pydicom.pixels

    class NoBackend:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoBackend())
    with pytest.raises(RuntimeError, match=r"1\.2\.840\.10008\.1\.2\.4\.90"):
        render.check_decoders({"1.2.840.10008.1.2.4.90"})


# --- photometric interpretation, masking, signed data ---------------------------------------------------------
def test_monochrome1_inverted_exactly_once():
    ramp = np.tile(np.arange(256, dtype=np.uint16), (40, 1))  # 255 * d / 255 is exact: truncation cannot differ
    mono1 = roundtrip(make_dataset(ramp, "MONOCHROME1", bits_stored=12, PresentationLUTShape="INVERSE"))
    mono2 = roundtrip(make_dataset(255 - ramp, "MONOCHROME2", bits_stored=12, PresentationLUTShape="IDENTITY"))
    for mode in render.RENDER_MODES:
        assert np.array_equal(render_ds(mono1, mode), render_ds(mono2, mode)), mode
    # and it is inverted at all: same stored values, different photometric -> complementary images
    same = roundtrip(make_dataset(ramp, "MONOCHROME2", bits_stored=12))
    assert np.array_equal(render_ds(mono1, "reference_rsna"), 255 - render_ds(same, "reference_rsna"))


def test_bits_above_bits_stored_are_masked():
    px = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (40, 1))
    dirty = px.copy()
    dirty[:5] |= 0x8000  # a stray overlay bit above BitsStored = 12
    arr, info = render.decode_pixels(roundtrip(make_dataset(dirty, bits_stored=12)))
    assert info.bits_masked and np.array_equal(arr, px.astype(np.int32))
    arr, info = render.decode_pixels(roundtrip(make_dataset(px, bits_stored=12)))
    assert not info.bits_masked


def test_signed_pixels_min_max():
    px = np.tile(np.arange(-1000, 1000, 25, dtype=np.int16), (40, 1))
    ds = roundtrip(make_dataset(px, signed=True, bits_stored=16))
    arr, info = render.decode_pixels(ds)
    assert arr.min() == -1000 and not info.bits_masked
    out = render.render(arr, ds, "mimic_jpg", info)
    assert out[:, 0].max() == 0 and out[:, -1].min() == 255
    assert (np.diff(out[0].astype(int)) >= 0).all()


# --- voi and reference_rsna -----------------------------------------------------------------------------------
def _ramp_ds(**kw) -> Dataset:
    return roundtrip(make_dataset(np.tile(np.arange(1024, dtype=np.uint16), (32, 1)), bits_stored=10, **kw))


def test_voi_linear_window_uses_first_window():
    ds = _ramp_ds(WindowCenter=[512, 100, 900], WindowWidth=[256, 50, 50])
    out = render_ds(ds, "voi")[0].astype(int)
    x = np.arange(1024.0)
    y = np.clip((x - 511.5) / 255 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1 with c - 0.5, w - 1
    expected = np.rint((y - y.min()) / (y.max() - y.min()) * 255)
    assert np.abs(out - expected).max() <= 1
    assert out[:380].max() == 0 and out[650:].min() == 255


def test_voi_linear_exact_sigmoid_and_modality_lut():
    x = np.arange(1024.0)
    out = render_ds(_ramp_ds(WindowCenter=400, WindowWidth=200, VOILUTFunction="LINEAR_EXACT"), "voi")[0]
    y = np.clip((x - 400) / 200 + 0.5, 0, 1)
    assert np.abs(out - np.rint(y * 255)).max() <= 1
    out = render_ds(_ramp_ds(WindowCenter=512, WindowWidth=300, VOILUTFunction="SIGMOID"), "voi")[0]
    y = 1 / (1 + np.exp(-4 * (x - 512) / 300))
    assert np.abs(out - np.rint((y - y.min()) / (y.max() - y.min()) * 255)).max() <= 1
    # window in modality units: slope 2, intercept -100 -> window centre 924 is at stored value 512
    out = render_ds(_ramp_ds(RescaleSlope=2, RescaleIntercept=-100, WindowCenter=924, WindowWidth=512), "voi")[0]
    assert out[:380].max() == 0 and out[650:].min() == 255 and abs(int(out[512]) - 128) <= 1


def test_voi_lut_sequence_preferred_over_window():
    lut_ds = Dataset()
    lut_ds.LUTDescriptor = [1024, 0, 16]
    lut_ds.LUTData = np.arange(1023, -1, -1, dtype=np.uint16).tobytes()  # decreasing: the rendering is reversed
    ds = make_dataset(np.tile(np.arange(1024, dtype=np.uint16), (32, 1)), bits_stored=10,
                      WindowCenter=512, WindowWidth=64)
    ds.VOILUTSequence = [lut_ds]
    ds = roundtrip(ds)
    out = render_ds(ds, "voi")[0].astype(int)
    assert out[0] == 255 and out[-1] == 0 and (np.diff(out) <= 0).all()
    assert dicom_header.header_row(ds)["has_voi_lut_sequence"] is True


def test_reference_rsna_formula():
    px = np.tile(np.array([[0, 100, 1000, 2001]], np.uint16), (32, 10))
    ds = roundtrip(make_dataset(px, bits_stored=12))
    out = render_ds(ds, "reference_rsna")[0, :4].tolist()
    assert out == [0, round(100 * 255 / 2001), round(1000 * 255 / 2001), 255] == [0, 13, 127, 255]
    ds1 = roundtrip(make_dataset(px, "MONOCHROME1", bits_stored=12))
    assert render_ds(ds1, "reference_rsna")[0, :4].tolist() == [255, 242, 128, 0]


# --- colour, rejects -------------------------------------------------------------------------------------------
def test_colour_luminance_reject_and_grey_rgb():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[:20, :, 1] = 100
    ds = roundtrip(make_dataset(rgb))
    arr, info = render.decode_pixels(ds, colour="luminance")
    assert info.colour_converted and arr[0, 0] == round(0.299 * 200 + 0.587 * 100) and arr[-1, 0] == round(60)
    with pytest.raises(Reject) as e:
        render.decode_pixels(ds, colour="reject")
    assert e.value.reason == "colour"
    grey = np.repeat(np.arange(40, dtype=np.uint8)[None, :, None], 40, 0).repeat(3, 2)
    arr, info = render.decode_pixels(roundtrip(make_dataset(grey)), colour="reject")
    assert not info.colour_converted and np.array_equal(arr, grey[..., 0])


@pytest.mark.parametrize("kwargs,reason", [
    (dict(modality="CT"), "non_radiograph_modality"),
    (dict(frames=2), "multi_frame"),
    (dict(syntax="1.2.3.4.5.6"), "unsupported_syntax"),
])
def test_rejects(kwargs, reason):
    frames = kwargs.get("frames", 1)
    px = np.zeros((frames, 40, 40) if frames > 1 else (40, 40), np.uint16)
    ds = make_dataset(px, **kwargs)
    with pytest.raises(Reject) as e:
        render.decode_pixels(ds)
    assert e.value.reason == reason


def test_reject_small_and_missing_pixels():
    with pytest.raises(Reject, match="bad_dimensions"):
        render.decode_pixels(make_dataset(np.zeros((8, 40), np.uint8)))
    ds = make_dataset(np.zeros((40, 40), np.uint8))
    del ds.PixelData
    with pytest.raises(Reject, match="no_pixel_data"):
        render.decode_pixels(ds)
    ds = make_dataset(np.zeros((40, 40), np.uint16))
    ds.PixelData = ds.PixelData[:1000]
    with pytest.raises(Reject, match="truncated"):
        render.decode_pixels(ds)


# --- resize, PNG, header whitelist ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,expected", [((1000, 1500), (512, 768)), ((1500, 1000), (768, 512)),
                                            ((300, 400), (512, 683)), ((512, 600), (512, 600))])
def test_resize_keeps_aspect(shape, expected):
    out = render.resize_short_side(np.full(shape, 90, np.uint8), 512)
    assert out.shape == expected and out.dtype == np.uint8 and (out == 90).all()


def test_resize_is_antialiased():
    checker = ((np.indices((1024, 1024)).sum(0) % 2) * 255).astype(np.uint8)  # 1-pixel checkerboard
    out = render.resize_short_side(checker, 512).astype(int)
    assert abs(out.mean() - 127.5) < 2 and out[8:-8, 8:-8].std() < 3  # aliasing would leave black/white


def test_png_is_lossless():
    img = np.random.default_rng(1).integers(0, 256, (37, 53), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(render.encode_png(img))))
    assert np.array_equal(back, img)


@pytest.mark.filterwarnings("ignore:Invalid value for VR TM", "ignore:The value length")
def test_header_row_whitelist_only():
    phi = {"PatientName": "Doe^Jane", "PatientID": "MRN123456", "PatientBirthDate": "19500101",
           "AccessionNumber": "ACC987", "InstitutionName": "General Hospital", "ReferringPhysicianName": "Who^Dr",
           "StudyInstanceUID": "1.2.3.999", "StudyDescription": "CHEST", "OperatorsName": "Tech^A"}
    ds = make_dataset(np.zeros((40, 40), np.uint16), bits_stored=12, ViewPosition="PA", StudyDate="21800506",
                      StudyTime="80556.875", PixelSpacing=[0.139, 0.139],
                      PerformedProcedureStepDescription="X" * 101, **phi)
    code = Dataset()
    code.CodeMeaning = "postero-anterior"
    ds.ViewCodeSequence = [code]
    row = dicom_header.header_row(roundtrip(ds))
    assert tuple(row) == dicom_header.HEADER_COLUMNS
    assert not set(phi) & set(row)
    assert not {str(v) for v in row.values()} & set(phi.values())
    assert row["ViewPosition"] == "PA" and row["StudyTime"] == "80556.875" and row["StudyDate"] == "21800506"
    assert row["ViewCodeSequence_CodeMeaning"] == "postero-anterior" and row["pixel_spacing_mm"] == 0.139
    assert row["PerformedProcedureStepDescription"] is None  # > 100 characters are skipped


def _real_or_synthetic_datasets():
    out = []
    for name in ("nih-cxr14_sample.dcm", "siim_sample.dcm", "wg04_RG1_J2KI.dcm"):
        if (SHARED / "dicom" / name).is_file():
            out.append(pydicom.dcmread(SHARED / "dicom" / name))
    rng = np.random.default_rng(7)
    big = np.clip(rng.normal(30000, 9000, (700, 560)), 0, 65535).astype(np.uint16)
    out.append(roundtrip(make_dataset(big, "MONOCHROME1", WindowCenter=30000, WindowWidth=20000)))
    out.append(roundtrip(make_dataset(ramp_image((300, 420), 12, 3), bits_stored=12)))
    return out


@pytest.mark.parametrize("mode", render.RENDER_MODES)
def test_render_image_is_render(mode):
    """The stage's Pillow path (render_image -> resize) gives the bytes of render() -> resize, in every mode."""
    for ds in _real_or_synthetic_datasets():
        arr, info = render.decode_pixels(ds)
        ref = render.render(arr, ds, mode, info)
        im = render.render_image(arr, ds, mode, info)
        assert im.mode == "L" and np.array_equal(np.asarray(im), ref)
        assert np.array_equal(render.resize_short_side(im, 64), render.resize_short_side(ref, 64))
    with pytest.raises(ValueError, match="'L' image"):
        render.resize_short_side(Image.new("RGB", (80, 80)), 32)


def test_blocked_gather_and_int16_minmax():
    """_take equals fancy indexing for any block split; signed 16-bit input (wide ranges that overflowed int16
    arithmetic) renders as the float64 formula of docs/data.md §2.1."""
    rng = np.random.default_rng(3)
    lut = rng.integers(0, 256, 5000).astype(np.uint8)
    for shape in ((1, 7), (3, 1), (700, 333), (2, 200_000)):
        idx = rng.integers(0, 5000, shape).astype(np.uint16)
        assert np.array_equal(render._take(lut, idx), lut[idx])
    raw = np.concatenate([rng.integers(-32768, 32768, 3998), [-32768, 32767]]).reshape(50, 80).astype(np.int16)
    for mono1 in (False, True):
        x = (raw.astype(np.float64) - raw.min()) / (float(raw.max()) - float(raw.min())) * 255
        want = x.astype(np.uint8)
        want = 255 - want if mono1 else want
        assert np.array_equal(render.render_mimic_jpg(raw, mono1, equalize=False), want)
        assert np.array_equal(render.render_mimic_jpg(raw, mono1), render.equalize_hist(want))
