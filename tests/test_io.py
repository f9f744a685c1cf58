"""Tests for ms_core.foundation.io: NIfTI reading with clear errors, atomic writes, PHI
scrubbing."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ms_core.foundation import io
from ms_core.foundation.errors import InputError, NiftiError
from ms_core.synthetic.synth import anisotropic_affine, sphere_labels, sphere_volume_ml


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _write_patched_sform(path: Path, row: int, value: float) -> None:
    """Valid image whose sform row ``row`` (NIfTI-1 bytes 280 + 16 * row) is set to ``value``.

    nibabel refuses to write such headers, so the bytes are patched after serialisation.
    """
    raw = bytearray(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).to_bytes())
    start = 280 + 16 * row
    raw[start:start + 16] = struct.pack("<4f", value, value, value, value)
    path.write_bytes(bytes(raw))


def test_roundtrip_int16_keeps_values_and_affine(tmp_path: Path) -> None:
    aff = anisotropic_affine()
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) * 3.0
    io.save_volume(tmp_path / "x.nii.gz", data, aff, np.int16)
    vol = io.load_volume(tmp_path / "x.nii.gz", "FLAIR")
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, data, atol=0.02)
    np.testing.assert_allclose(vol.affine, aff)
    assert vol.spacing_mm == pytest.approx((0.9, 1.1, 3.0))


def test_saved_files_are_deterministic_and_scrubbed(tmp_path: Path) -> None:
    data = np.ones((3, 3, 3), dtype=np.float32)
    io.save_volume(tmp_path / "a.nii.gz", data, np.eye(4))
    io.save_volume(tmp_path / "b.nii.gz", data, np.eye(4))
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    hdr = nib.load(tmp_path / "a.nii.gz").header
    for key in io.PHI_FIELDS:
        assert hdr[key].item() in (b"", "")


def test_sphere_mask_volume_under_anisotropic_affine(tmp_path: Path) -> None:
    # Reference: the exact ball volume; voxelisation error at 0.9 x 1.1 x 3 mm is under 3 %.
    aff = anisotropic_affine()
    labels = sphere_labels((90, 90, 30), aff, [((0.0, 0.0, 10.0), 12.0)])
    io.save_labels(tmp_path / "m.nii.gz", labels, aff)
    mask = io.load_lesion_mask(tmp_path / "m.nii.gz")
    assert mask.labels.dtype == np.int32
    assert mask.volume_ml == pytest.approx(sphere_volume_ml(12.0), rel=0.03)


def test_empty_and_single_voxel_masks(tmp_path: Path) -> None:
    empty = np.zeros((4, 4, 4), dtype=np.uint8)
    io.save_labels(tmp_path / "e.nii.gz", empty, np.diag([1.0, 1.0, 3.0, 1.0]))
    assert io.load_lesion_mask(tmp_path / "e.nii.gz").volume_ml == 0.0
    one = empty.copy()
    one[1, 2, 3] = 1
    io.save_labels(tmp_path / "o.nii.gz", one, np.diag([1.0, 1.0, 3.0, 1.0]))
    assert io.load_lesion_mask(tmp_path / "o.nii.gz").volume_ml == pytest.approx(0.003)


@pytest.mark.parametrize(("name", "make", "needle"), [
    ("missing.nii.gz", None, "file not found"),
    ("empty.nii.gz", lambda p: p.write_bytes(b""), "empty file"),
    ("garbage.nii.gz", lambda p: p.write_bytes(b"not a nifti at all" * 20), "cannot read"),
    ("fourd.nii.gz", lambda p: _write(p, np.zeros((4, 4, 4, 3), np.float32)), "3D"),
    ("nan.nii.gz", lambda p: _write(p, np.full((4, 4, 4), np.nan, np.float32)), "NaN"),
    ("zero_row.nii", lambda p: _write_patched_sform(p, 1, 0.0), "singular"),
    ("nan_affine.nii", lambda p: _write_patched_sform(p, 0, float("nan")), "NaN or Inf"),
    ("huge_voxel.nii.gz", lambda p: _write(p, np.zeros((4, 4, 4), np.float32),
                                          np.diag([1.0, 1.0, 90.0, 1.0])), "voxel size"),
])
def test_bad_files_raise_nifti_error_naming_the_file(tmp_path: Path, name: str, make, needle: str
                                                     ) -> None:
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(NiftiError) as err:
        io.load_volume(path, "FLAIR")
    assert name in str(err.value)
    assert needle in str(err.value)
    assert isinstance(err.value, InputError)


def test_truncated_gzip_is_reported_when_data_is_read(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.nii.gz", np.random.default_rng(0).random((40, 40, 40),
                                                                           dtype=np.float32))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[:3000])
    io.read_nifti_header(bad)  # the header alone is still readable
    with pytest.raises(NiftiError, match=r"bad\.nii\.gz.*truncated or corrupt"):
        io.load_volume(bad, "FLAIR")


def test_non_integer_mask_is_refused(tmp_path: Path) -> None:
    _write(tmp_path / "p.nii.gz", np.full((3, 3, 3), 0.3, np.float32))
    with pytest.raises(NiftiError, match="non-integer"):
        io.load_lesion_mask(tmp_path / "p.nii.gz")


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), io.atomic_open(target) as fh:
        fh.write(b'{"a": 2, "trunc')
        raise RuntimeError("killed mid-write")
    assert io.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    io.write_json(tmp_path / "x.json", {})
    assert os.stat(tmp_path / "x.json").st_mode & 0o044 == 0o044 & ~io._UMASK


def test_nifti_bytes_decodes_to_same_array() -> None:
    data = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    raw = gzip.decompress(io.nifti_bytes(data, np.eye(4), np.uint8))
    img = nib.Nifti1Image.from_bytes(raw)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)


def test_read_json_reports_bad_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(InputError, match=r"bad\.json.*not valid JSON"):
        io.read_json(tmp_path / "bad.json")


def test_sitk_roundtrip_keeps_world_coordinates() -> None:
    import SimpleITK as sitk

    aff = anisotropic_affine()
    aff[:3, :3] = aff[:3, :3] @ np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]])  # rotated axes
    data = np.random.default_rng(1).random((5, 6, 7)).astype(np.float32)
    img = io.to_sitk(data, aff)
    back, aff2 = io.from_sitk(img)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(aff2, aff, atol=1e-9)
    # Voxel (1, 2, 3) sits at the same world point: ITK reports it in LPS (x and y negated).
    world_ras = aff @ np.array([1, 2, 3, 1.0])
    lps = img.TransformIndexToPhysicalPoint((1, 2, 3))
    np.testing.assert_allclose(lps, world_ras[:3] * np.array([-1, -1, 1]), atol=1e-9)
    assert img.GetPixel(1, 2, 3) == pytest.approx(float(data[1, 2, 3]))
    assert isinstance(img, sitk.Image)


# ----------------------------------------------------------------------------- input validation
def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None,
           dtype: object = None) -> Path:
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine)
    if dtype is not None:
        img.header.set_data_dtype(dtype)
    nib.save(img, path)
    return path


def test_four_d_file_needs_a_volume_index(tmp_path: Path) -> None:
    data = np.stack([np.full((4, 4, 4), v, np.float32) + np.arange(4.0) for v in (1, 2, 3)],
                    axis=-1)
    path = _nifti(tmp_path / "fmri.nii.gz", data)
    with pytest.raises(NiftiError, match=r"fmri\.nii\.gz.*3 volumes.*volume=0\.\.2"):
        io.load_volume(path, "FLAIR")
    vol = io.load_volume(path, "FLAIR", volume=2)
    np.testing.assert_array_equal(vol.data, data[..., 2])
    assert io.load_volume(path, "FLAIR", volume=1, canonical=True).shape == (4, 4, 4)
    with pytest.raises(NiftiError, match="volume 3 does not exist"):
        io.load_volume(path, "FLAIR", volume=3)
    single = _nifti(tmp_path / "single.nii", data[..., :1])  # (X, Y, Z, 1) is 3D
    assert io.load_volume(single, "FLAIR").shape == (4, 4, 4)
    with pytest.raises(NiftiError, match="volume 1 does not exist"):
        io.load_volume(tmp_path / "single.nii", "FLAIR", volume=1)


@pytest.mark.parametrize(("dtype", "ok"), [
    (np.uint8, True), (np.int16, True), (np.uint16, True), (np.int32, True),
    (np.float32, True), (np.float64, True), (np.complex64, False),
])
def test_data_types(tmp_path: Path, dtype: type, ok: bool) -> None:
    data = (np.arange(64).reshape(4, 4, 4) % 7).astype(dtype)
    path = _nifti(tmp_path / "x.nii", data)
    if ok:
        np.testing.assert_array_equal(io.load_volume(path, "T1w").data, data.astype(np.float32))
    else:
        with pytest.raises(NiftiError, match=r"x\.nii: unsupported voxel data type complex64"):
            io.read_nifti_header(path)


def test_rgb_data_is_refused(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    with pytest.raises(NiftiError, match="unsupported voxel data type"):
        io.load_volume(path, "FLAIR")


def test_voxel_and_file_size_caps_are_configurable(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = _nifti(tmp_path / "big.nii.gz", np.ones((10, 10, 10), np.float32))
    monkeypatch.setenv("MS_DASH_MAX_VOXELS", "999")
    with pytest.raises(NiftiError, match=r"big\.nii\.gz.*1000 voxels.*limit of 999.*"
                                         "MS_DASH_MAX_VOXELS"):
        io.read_nifti_header(path)
    monkeypatch.setenv("MS_DASH_MAX_VOXELS", "1000")
    io.read_nifti_header(path)
    monkeypatch.setenv("MS_DASH_MAX_FILE_MB", "0.0001")  # about 100 bytes
    with pytest.raises(NiftiError, match=r"big\.nii\.gz: file is .* MiB, over the .*"
                                         "MS_DASH_MAX_FILE_MB"):
        io.read_nifti_header(path)


def test_default_voxel_cap_is_512_cubed() -> None:
    assert io.MAX_VOXELS == 512**3


@pytest.mark.parametrize(("spacing", "ok"), [
    ((0.1, 1.0, 1.0), True), ((0.09, 1.0, 1.0), False), ((1.0, 1.0, 10.0), True),
    ((1.0, 1.0, 10.5), False),
])
def test_voxel_size_range(tmp_path: Path, spacing: tuple[float, float, float], ok: bool) -> None:
    path = _nifti(tmp_path / "s.nii", np.arange(64, dtype=np.float32).reshape(4, 4, 4),
                  np.diag([*spacing, 1.0]))
    if ok:
        io.read_nifti_header(path)
    else:
        with pytest.raises(NiftiError, match=r"voxel size .* outside 0\.1-10\.0 mm"):
            io.read_nifti_header(path)


def test_truncated_uncompressed_file_is_found_from_the_header(tmp_path: Path) -> None:
    good = _nifti(tmp_path / "good.nii", np.ones((8, 8, 8), np.float32))
    bad = tmp_path / "cut.nii"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(NiftiError, match=r"cut\.nii: file is truncated: the header promises "
                                         r"2400 bytes .* has 1000 bytes"):
        io.read_nifti_header(bad)


def test_gzip_whose_header_promises_more_than_deflate_can_hold(tmp_path: Path) -> None:
    raw = bytearray(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_bytes())
    raw[42:48] = struct.pack("<3h", 500, 500, 500)  # dim[1:4]; 500 MB of float32 promised
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(NiftiError, match=r"truncated.*compressed bytes"):
        io.read_nifti_header(path)


def test_corrupt_gzip_stream_is_reported(tmp_path: Path) -> None:
    good = _nifti(tmp_path / "g.nii.gz", np.random.default_rng(2).random((30, 30, 30)))
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "flipped.nii.gz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(NiftiError, match=r"flipped\.nii\.gz.*(truncated or corrupt|cannot read)"):
        io.load_volume(bad, "FLAIR")
    crc = bytearray(good.read_bytes())
    crc[-6] ^= 0x01  # CRC32 of the gzip trailer
    (tmp_path / "crc.nii.gz").write_bytes(bytes(crc))
    with pytest.raises(NiftiError, match=r"crc\.nii\.gz"):
        io.load_volume(tmp_path / "crc.nii.gz", "FLAIR")


@pytest.mark.parametrize(("values", "needle"), [
    (np.full((4, 4, 4), np.inf, np.float32), "NaN or Inf"),
    (np.where(np.arange(64).reshape(4, 4, 4) == 5, np.nan, 1.0).astype(np.float32), "1 voxels"),
    (np.full((4, 4, 4), 1e300), "NaN or Inf"),  # float64 beyond float32
])
def test_non_finite_data_is_refused(tmp_path: Path, values: np.ndarray, needle: str) -> None:
    path = _nifti(tmp_path / "nf.nii", values)
    with pytest.raises(NiftiError, match=needle):
        io.load_volume(path, "prob")


def test_scaling_to_inf_is_refused(tmp_path: Path) -> None:
    raw = bytearray(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4)).to_bytes())
    raw[112:116] = struct.pack("<f", 3.0e38)  # scl_slope: int16 * 3e38 overflows float32
    raw[352:354] = struct.pack("<h", 30000)
    (tmp_path / "scaled.nii").write_bytes(bytes(raw))
    with pytest.raises(NiftiError, match="NaN or Inf"):
        io.load_volume(tmp_path / "scaled.nii", "T1w")


def test_empty_or_constant_scan_is_refused_but_derived_maps_may_be(tmp_path: Path) -> None:
    zero = _nifti(tmp_path / "zero.nii.gz", np.zeros((4, 4, 4), np.float32))
    const = _nifti(tmp_path / "const.nii.gz", np.full((4, 4, 4), 7.0, np.float32))
    with pytest.raises(NiftiError, match=r"zero\.nii\.gz: image is empty \(every voxel is 0\)"):
        io.load_volume(zero, "FLAIR")
    with pytest.raises(NiftiError, match=r"image is constant \(every voxel is 7\)"):
        io.load_volume(const, "T1w")
    assert io.load_volume(zero, "prob").data.max() == 0.0  # no lesions: a valid map
    assert io.load_volume(zero, "FLAIR", allow_constant=True).shape == (4, 4, 4)
    with pytest.raises(NiftiError, match="empty"):
        io.load_volume(zero, "prob", allow_constant=False)
    assert io.load_lesion_mask(zero).volume_ml == 0.0


def test_mask_labels_beyond_int32_are_refused(tmp_path: Path) -> None:
    data = np.zeros((4, 4, 4), np.float64)
    data[1, 1, 1] = 2.0**40
    with pytest.raises(NiftiError, match="over the largest id"):
        io.load_lesion_mask(_nifti(tmp_path / "ids.nii", data))


def test_canonical_reorientation_keeps_world_coordinates(tmp_path: Path) -> None:
    aff = np.array([[0.0, 0, -2, 10], [-1, 0, 0, 5], [0, 3, 0, -4], [0, 0, 0, 1]])
    data = np.random.default_rng(3).random((5, 6, 7)).astype(np.float32)
    path = _nifti(tmp_path / "las.nii", data, aff)
    plain, canon = io.load_volume(path, "T1w"), io.load_volume(path, "T1w", canonical=True)
    ref = nib.as_closest_canonical(nib.load(path))
    np.testing.assert_allclose(canon.affine, ref.affine)
    np.testing.assert_array_equal(canon.data, np.asanyarray(ref.dataobj).astype(np.float32))
    world = plain.affine @ np.array([1, 2, 3, 1.0])
    ijk = np.rint(np.linalg.solve(canon.affine, world)).astype(int)[:3]
    assert canon.data[tuple(ijk)] == plain.data[1, 2, 3]


# ----------------------------------------------------------------------------- PHI
def _headers_of_every_writer(tmp_path: Path) -> dict[str, nib.Nifti1Header]:
    data = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    io.save_volume(tmp_path / "v.nii.gz", data, np.eye(4))
    io.save_volume(tmp_path / "v.nii", data, np.eye(4), np.int16)
    io.save_labels(tmp_path / "l.nii.gz", data.astype(np.uint16) * 20, np.eye(4))  # uint16
    viewer = nib.Nifti1Image.from_bytes(gzip.decompress(io.nifti_bytes(data, np.eye(4))))
    return {"save_volume gz": nib.load(tmp_path / "v.nii.gz").header,
            "save_volume nii": nib.load(tmp_path / "v.nii").header,
            "save_labels": nib.load(tmp_path / "l.nii.gz").header,
            "nifti_bytes": viewer.header}


def test_every_writer_clears_identifying_header_fields(tmp_path: Path) -> None:
    """descrip, aux_file, intent_name, db_name empty and no header extensions (which can carry
    a whole DICOM header) in every NIfTI we write."""
    for writer, hdr in _headers_of_every_writer(tmp_path).items():
        for key in io.PHI_FIELDS:
            assert hdr[key].item() in (b"", ""), (writer, key)
        assert len(hdr.extensions) == 0, writer


def test_loaded_phi_does_not_survive_a_round_trip(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.arange(27, dtype=np.float32).reshape(3, 3, 3), np.eye(4))
    img.header["descrip"] = b"Doe^Jane 1970-01-01"
    img.header["aux_file"] = b"MRN123456"
    img.header["intent_name"] = b"Jane"
    img.header["db_name"] = b"hospital"
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PatientName=Doe"))
    nib.save(img, tmp_path / "phi.nii.gz")
    vol = io.load_volume(tmp_path / "phi.nii.gz", "FLAIR")
    io.save_volume(tmp_path / "out.nii.gz", vol.data, vol.affine)
    raw = gzip.decompress((tmp_path / "out.nii.gz").read_bytes())
    for secret in (b"Doe", b"MRN123456", b"Jane", b"hospital"):
        assert secret not in raw


def test_probability_viewer_bytes_are_compact_uint8_with_the_same_geometry(tmp_path: Path
                                                                           ) -> None:
    import gzip

    import nibabel as nib

    from ms_core.foundation.io import nifti_bytes, probability_viewer_bytes, save_volume

    rng = np.random.default_rng(0)
    prob = rng.random((40, 48, 36)).astype(np.float32)
    affine = np.diag([0.9, 1.1, 3.0, 1.0])
    affine[:3, 3] = [-20.0, 5.0, 12.0]
    path = tmp_path / "lesion_prob.nii.gz"
    save_volume(path, prob, affine, np.float32)
    payload = probability_viewer_bytes(path)
    img = nib.Nifti1Image.from_bytes(gzip.decompress(payload))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    np.testing.assert_allclose(np.asanyarray(img.dataobj) / 255.0, prob, atol=0.5 / 255 + 1e-7)
    assert len(payload) < len(nifti_bytes(prob, affine, np.float32)) / 2


# ------------------------------------------------------------------------ derived-array cache
def _counting_builder(calls: list[int]):  # type: ignore[no-untyped-def]
    def build() -> dict[str, np.ndarray]:
        calls.append(1)
        rng = np.random.default_rng(len(calls))
        return {"m": rng.random((5, 6, 7)).astype(np.float32),
                "mask": rng.random((5, 6, 7)) > 0.5, "empty": np.zeros((0, 3), bool),
                "affine": np.eye(4)}
    return build


def test_cached_arrays_build_once_then_read_back_exactly(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MS_DASH_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[int] = []
    names = ("m", "mask", "empty", "affine")
    built = io.cached_arrays("maps", "k1", names, _counting_builder(calls))
    again = io.cached_arrays("maps", "k1", names, _counting_builder(calls))
    assert len(calls) == 1
    for k in names:
        assert again[k].dtype == built[k].dtype and again[k].shape == built[k].shape
        assert np.array_equal(again[k], built[k])
    (path,) = (tmp_path / "cache").iterdir()
    assert path.name == "maps-k1.npz"
    assert np.load(path)["mask"].size == 27  # bool arrays are bit-packed: 210 bits in 27 bytes
    # A new key (changed code or library) rebuilds and removes the stale entry.
    io.cached_arrays("maps", "k2", names, _counting_builder(calls))
    assert len(calls) == 2
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["maps-k2.npz"]
    # An entry lacking an expected array is rebuilt.
    io.cached_arrays("maps", "k2", (*names, "extra"), lambda: {**built, "extra": np.ones(2)})
    assert "extra" in np.load(tmp_path / "cache" / "maps-k2.npz").files


def test_cached_arrays_survive_a_corrupt_file_and_an_unwritable_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("MS_DASH_CACHE_DIR", str(cache))
    (cache / "maps-k.npz").write_bytes(b"PK\x03\x04 not a zip")
    calls: list[int] = []
    out = io.cached_arrays("maps", "k", ("m",), _counting_builder(calls))
    assert len(calls) == 1 and out["m"].shape == (5, 6, 7)
    assert "unreadable" in caplog.text
    assert np.array_equal(np.load(cache / "maps-k.npz")["m"], out["m"])  # replaced
    # A cache path that is a file, not a folder: built, logged, nothing raised.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MS_DASH_CACHE_DIR", str(blocker))
    assert io.cached_arrays("maps", "k", ("m",), _counting_builder(calls))["m"].size == 210
    assert len(calls) == 2 and "cannot write" in caplog.text
    # "off" and a None key skip the cache altogether.
    monkeypatch.setenv("MS_DASH_CACHE_DIR", "off")
    io.cached_arrays("maps", "k", ("m",), _counting_builder(calls))
    monkeypatch.setenv("MS_DASH_CACHE_DIR", str(cache))
    io.cached_arrays("maps", None, ("m",), _counting_builder(calls))
    assert len(calls) == 4


# --------------------------------------------------------------- header contradictions
def _head_file(path: Path, *, pixdim: tuple[float, float, float] | None = None,
               sizeof_hdr: int | None = None, sform_code: int = 1,
               qform_shift_mm: float = 0.0) -> Path:
    """A 12^3 FLAIR-like image, sform 2 mm with an origin, then its raw header bytes patched
    (nibabel repairs these fields when it writes): pixdim[1:4] (bytes 80-91), sizeof_hdr
    (0-3), sform_code (254-255) and the qform's x offset (qoffset_x, bytes 268-271)."""
    rng = np.random.default_rng(0)
    data = rng.uniform(10.0, 20.0, (12, 12, 12)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-11.0, -12.0, -13.0]
    img = nib.Nifti1Image(data, aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    raw = bytearray(img.to_bytes())
    if pixdim is not None:
        raw[80:92] = struct.pack("<3f", *pixdim)
    if sizeof_hdr is not None:
        raw[0:4] = struct.pack("<i", sizeof_hdr)
    raw[254:256] = struct.pack("<h", sform_code)
    if qform_shift_mm:
        raw[268:272] = struct.pack("<f", -11.0 + qform_shift_mm)
    path.write_bytes(bytes(raw))
    return path


def test_a_consistent_header_gives_no_warning(tmp_path: Path) -> None:
    assert io.header_warnings(_head_file(tmp_path / "ok.nii")) == []
    assert io.header_warnings(_head_file(tmp_path / "near.nii", qform_shift_mm=0.5)) == []


@pytest.mark.parametrize("pixdim", [(0.0, 2.0, 2.0), (2.0, float("nan"), 2.0)])
def test_broken_pixdim_beside_a_valid_sform_is_read_from_the_sform_with_a_warning(
        tmp_path: Path, pixdim: tuple[float, float, float],
        caplog: pytest.LogCaptureFixture) -> None:
    path = _head_file(tmp_path / "pix.nii", pixdim=pixdim)
    warnings = io.header_warnings(path)
    assert len(warnings) == 1 and str(path) in warnings[0] and "pixdim[1:4]" in warnings[0]
    assert "from the sform (2, 2, 2 mm)" in warnings[0]
    with caplog.at_level("WARNING", logger="ms_core.foundation.io"):
        vol = io.load_volume(path, "FLAIR")
    assert vol.spacing_mm == (2.0, 2.0, 2.0) and np.allclose(vol.affine[:3, 3], [-11, -12, -13])
    assert any("pixdim[1:4]" in r.getMessage() for r in caplog.records)


def test_broken_pixdim_without_an_sform_is_refused(tmp_path: Path) -> None:
    path = _head_file(tmp_path / "nogeom.nii", pixdim=(0.0, 0.0, 2.0), sform_code=0)
    with pytest.raises(NiftiError, match=r"pixdim\[1:4\] is \[0, 0, 2\].*no sform") as e:
        io.load_volume(path, "FLAIR")
    assert str(path) in str(e.value)


def test_wrong_sizeof_hdr_and_disagreeing_qform_are_reported(tmp_path: Path) -> None:
    odd = _head_file(tmp_path / "size.nii", sizeof_hdr=400)
    (warning,) = io.header_warnings(odd)
    assert "sizeof_hdr is 400, not 348" in warning and str(odd) in warning
    assert io.load_volume(odd, "FLAIR").spacing_mm == (2.0, 2.0, 2.0)
    apart = _head_file(tmp_path / "qform.nii", qform_shift_mm=5.0)
    (warning,) = io.header_warnings(apart)
    assert "qform and sform disagree by up to 5.0 mm" in warning and "sform is used" in warning
    assert np.allclose(io.load_volume(apart, "FLAIR").affine[:3, 3], [-11, -12, -13])


def test_file_hashes_are_remembered_but_follow_every_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digest memo never answers with old bytes: an in-place rewrite of the same size with
    the modification time set back, a replacement and a fresh (racy) file are all re-read."""
    import hashlib
    import os
    import time

    import ms_core.foundation.io as fio

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    path = tmp_path / "out.bin"
    path.write_bytes(b"A" * 1000)
    monkeypatch.setattr(fio, "RACY_NS", 0)
    assert fio.sha256_file(path) == digest(b"A" * 1000)
    real_sha256, expected = hashlib.sha256, digest(b"A" * 1000)
    with monkeypatch.context() as m:  # remembered: the file is not read again
        m.setattr(fio.hashlib, "sha256", lambda: pytest.fail("re-read an unchanged file"))
        assert fio.sha256_file(path) == expected
    assert fio.hashlib.sha256 is real_sha256
    before = path.stat()
    time.sleep(0.05)  # past one tick of the file-system clock
    with open(path, "r+b") as fh:  # same size, in place, modification time restored
        fh.write(b"B")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    assert fio.sha256_file(path) == digest(b"B" + b"A" * 999)
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"C" * 1000)
    os.replace(replacement, path)
    assert fio.sha256_file(path) == digest(b"C" * 1000)
    monkeypatch.setattr(fio, "RACY_NS", 10**12)  # every file is "just written"
    fio._HASHES.clear()
    assert fio.sha256_file(path) == digest(b"C" * 1000)
    assert not fio._HASHES
