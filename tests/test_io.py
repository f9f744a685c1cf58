"""Tests for ms_core.io: NIfTI reading with clear errors, atomic writes, PHI scrubbing."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ms_core import io
from ms_core.errors import InputError, NiftiError
from ms_core.synth import anisotropic_affine, sphere_labels, sphere_volume_ml


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
