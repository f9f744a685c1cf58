"""Tests for ms_core.imaging.dicom: geometry (affine vs ImagePositionPatient), values, series
choice, unsafe and broken sources, and that no identifying header value reaches a written file.

The synthetic series are written with pydicom here (``SeriesSpec``, ``write_series``,
``enhanced_series``); ``tests/test_importer.py`` imports them. The expected world coordinates
come straight from the DICOM definition: voxel (i, j, k) lies at
``ImagePositionPatient(slice k) + i * PixelSpacing[1] * row_cosine + j * PixelSpacing[0] *
column_cosine`` in LPS+, i.e. (-x, -y, z) in RAS+.
"""

from __future__ import annotations

import gzip
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from ms_core.foundation import io
from ms_core.foundation.errors import InputError
from ms_core.imaging import dicom
from ms_core.imaging.dicom import DicomLimits, SeriesChoiceError, read_dicom, slice_geometry

# ----------------------------------------------------------------------------- synthetic DICOM
#: Identifying values written into every synthetic file; none may appear in our outputs.
PHI = {"PatientName": "Doe^Jane^Secret", "PatientID": "PHI-ID-4711",
       "PatientBirthDate": "19710203", "InstitutionName": "St Elsewhere Clinic",
       "ReferringPhysicianName": "House^Gregory"}
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, float)
    return a / np.linalg.norm(a)


class SeriesSpec:
    """Geometry and values of one synthetic series.

    ``data`` (X, Y, Z) = (columns, rows, slices) holds the stored values; the file of slice k
    holds ``data[:, :, k].T`` (rows, columns). Voxel (i, j, k) lies at the LPS position
    ``origin + i * dx * row_dir + j * dy * col_dir + k * dz * normal``.
    """

    def __init__(self, shape: tuple[int, int, int] = (16, 14, 12), *,
                 spacing_mm: tuple[float, float, float] = (0.9, 1.1, 3.0),
                 row_dir: Sequence[float] = (1.0, 0.0, 0.0),
                 col_dir: Sequence[float] = (0.0, 1.0, 0.0),
                 origin: Sequence[float] = (-7.0, -9.0, -20.0), slope: float = 1.0,
                 intercept: float = 0.0, description: str = "AX FLAIR", seed: int = 0) -> None:
        self.shape = shape
        self.spacing_mm = spacing_mm
        self.row_dir = _unit(row_dir)
        col = np.asarray(col_dir, float)
        self.col_dir = _unit(col - (col @ self.row_dir) * self.row_dir)
        self.normal = np.cross(self.row_dir, self.col_dir)
        self.origin = np.asarray(origin, float)
        self.slope, self.intercept = slope, intercept
        self.description = description
        self.data = np.random.default_rng(seed).integers(0, 1000, size=shape).astype(np.uint16)
        self.series_uid = generate_uid()

    def position(self, k: float) -> np.ndarray:
        return self.origin + k * self.spacing_mm[2] * self.normal

    @property
    def values(self) -> np.ndarray:
        """Rescaled values, (X, Y, Z) float64."""
        return self.data.astype(np.float64) * self.slope + self.intercept

    def world_ras(self, ijk: np.ndarray) -> np.ndarray:
        """RAS+ mm of voxel indices (N, 3)."""
        ijk = np.asarray(ijk, float)
        lps = (self.origin + ijk[:, :1] * self.spacing_mm[0] * self.row_dir
               + ijk[:, 1:2] * self.spacing_mm[1] * self.col_dir
               + ijk[:, 2:3] * self.spacing_mm[2] * self.normal)
        return lps * np.array([-1.0, -1.0, 1.0])


def _base(spec: SeriesSpec, sop_class: str, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for key, value in PHI.items():
        setattr(ds, key, value)
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = "1.2.3.4", "1.2.3.5"
    ds.SeriesInstanceUID = spec.series_uid
    ds.Modality = "MR"
    ds.SeriesDescription = spec.description
    ds.SeriesNumber = 7 if "T1" in spec.description else 3
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20240131"
    ds.Manufacturer, ds.ManufacturerModelName = "Siemens", "Avanto"
    ds.MagneticFieldStrength = 1.5
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = spec.shape[1], spec.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def write_series(folder: Path, spec: SeriesSpec, *, skip: Sequence[int] = (),
                 positions: dict[int, Sequence[float]] | None = None,
                 orientation: dict[int, Sequence[float]] | None = None,
                 slopes: dict[int, float] | None = None, rle: bool = False,
                 seed: int = 0) -> list[Path]:
    """One file per slice in ``folder``, file names in shuffled slice order.

    ``skip`` leaves slices out; ``positions``/``orientation``/``slopes`` override one slice's
    ImagePositionPatient/ImageOrientationPatient/RescaleSlope (a changed slope changes the
    stored values so that the rescaled values stay ``spec.values``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    ks = [k for k in range(spec.shape[2]) if k not in skip]
    names = np.random.default_rng(seed).permutation(len(ks))
    paths = []
    for n, k in zip(names, ks, strict=True):
        ds = _base(spec, MR_IMAGE, RLELossless if rle else ExplicitVRLittleEndian)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in (positions or {}).get(k, spec.position(k))]
        ds.ImageOrientationPatient = [float(v) for v in (orientation or {}).get(
            k, (*spec.row_dir, *spec.col_dir))]
        ds.PixelSpacing = [spec.spacing_mm[1], spec.spacing_mm[0]]
        ds.SliceThickness = spec.spacing_mm[2]
        slope = (slopes or {}).get(k, spec.slope)
        raw = spec.data[:, :, k].T
        if slope != spec.slope:
            raw = np.rint(raw * spec.slope / slope).astype(np.uint16)
        ds.RescaleSlope, ds.RescaleIntercept = slope, spec.intercept
        if rle:
            ds.compress(RLELossless, np.ascontiguousarray(raw))
        else:
            ds.PixelData = np.ascontiguousarray(raw).tobytes()
        path = folder / f"IM{int(n):04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def enhanced_series(path: Path, spec: SeriesSpec) -> Path:
    """``spec`` as one enhanced (multi-frame) MR file, frames in reverse slice order."""
    ds = _base(spec, ENHANCED_MR_IMAGE)
    nz = spec.shape[2]
    ds.NumberOfFrames = nz
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    shared, orient, measures, scale = Dataset(), Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [float(v) for v in (*spec.row_dir, *spec.col_dir)]
    measures.PixelSpacing = [spec.spacing_mm[1], spec.spacing_mm[0]]
    measures.SliceThickness = spec.spacing_mm[2]
    scale.RescaleSlope, scale.RescaleIntercept, scale.RescaleType = (
        spec.slope, spec.intercept, "US")
    shared.PlaneOrientationSequence = DicomSequence([orient])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([scale])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    order = list(range(nz))[::-1]
    frames = []
    for k in order:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [float(v) for v in spec.position(k)]
        item.PlanePositionSequence = DicomSequence([plane])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = np.ascontiguousarray(np.stack([spec.data[:, :, k].T for k in order])).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def zip_folder(folder: Path, target: Path, *, prefix: str = "DICOM/") -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, prefix + str(path.relative_to(folder)))
    return target


# ----------------------------------------------------------------------------- fixtures
CONVERTERS = ["pydicom", pytest.param("dcm2niix", marks=pytest.mark.skipif(
    dicom.dcm2niix_binary() is None, reason="dcm2niix binary not installed"))]
#: (row cosine, column cosine) per orientation; the oblique one is about 20 degrees off axial.
ORIENTATIONS = {
    "axial": ((1, 0, 0), (0, 1, 0)),
    "sagittal": ((0, 1, 0), (0, 0, -1)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "oblique": ((0.94, 0.3, 0.1), (-0.3, 0.94, 0.33)),
}


def _check_volume(volume_data: np.ndarray, affine: np.ndarray, spec: SeriesSpec) -> None:
    assert volume_data.shape == spec.shape
    corners = np.array([[0, 0, 0], [15, 0, 0], [0, 13, 0], [0, 0, 11], [3, 5, 7], [15, 13, 11]])
    world = (affine @ np.c_[corners, np.ones(len(corners))].T).T[:, :3]
    np.testing.assert_allclose(world, spec.world_ras(corners), atol=1e-4)
    np.testing.assert_allclose(volume_data, spec.values, rtol=1e-6, atol=1e-3)


# ----------------------------------------------------------------------------- geometry, values
@pytest.mark.parametrize("converter", CONVERTERS)
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_affine_maps_voxel_centres_to_image_positions(tmp_path: Path, orientation: str,
                                                      converter: str) -> None:
    row, col = ORIENTATIONS[orientation]
    spec = SeriesSpec(row_dir=row, col_dir=col, slope=2.0, intercept=-10.0)
    write_series(tmp_path / "dcm", spec, seed=3)  # files in shuffled order
    out = read_dicom(tmp_path / "dcm", modality="FLAIR", converter=converter)  # type: ignore[arg-type]
    assert out.converter == converter
    assert out.volume.modality == "FLAIR"
    assert out.volume.data.dtype == np.float32
    np.testing.assert_allclose(out.volume.spacing_mm, spec.spacing_mm, atol=1e-6)
    _check_volume(out.volume.data, out.volume.affine, spec)


@pytest.mark.parametrize("converter", CONVERTERS)
def test_per_slice_rescale_slope_and_zipped_series(tmp_path: Path, converter: str) -> None:
    spec = SeriesSpec(row_dir=ORIENTATIONS["oblique"][0], col_dir=ORIENTATIONS["oblique"][1])
    spec.data = (spec.data // 4) * 4  # stored values that stay integers at slope 4
    write_series(tmp_path / "dcm", spec, slopes={4: 4.0, 5: 2.0})
    out = read_dicom(zip_folder(tmp_path / "dcm", tmp_path / "s.zip"), modality="FLAIR",
                     converter=converter)  # type: ignore[arg-type]
    _check_volume(out.volume.data, out.volume.affine, spec)


@pytest.mark.parametrize("converter", CONVERTERS)
def test_enhanced_multiframe_file(tmp_path: Path, converter: str) -> None:
    spec = SeriesSpec(row_dir=(0, 1, 0), col_dir=(0, 0, -1), slope=0.5)
    path = enhanced_series(tmp_path / "enh.dcm", spec)
    out = read_dicom(path, modality="T1w", converter=converter)  # type: ignore[arg-type]
    _check_volume(out.volume.data, out.volume.affine, spec)


def test_rle_compressed_series_with_pydicom(tmp_path: Path) -> None:
    spec = SeriesSpec()
    write_series(tmp_path / "dcm", spec, rle=True)
    out = read_dicom(tmp_path / "dcm", converter="pydicom")
    _check_volume(out.volume.data, out.volume.affine, spec)


def test_series_summary_keeps_only_what_the_pipeline_needs(tmp_path: Path) -> None:
    spec = SeriesSpec(description="AX T2 FLAIR")
    write_series(tmp_path / "dcm", spec)
    out = read_dicom(tmp_path / "dcm", modality="FLAIR", converter="pydicom")
    info = out.series
    assert (info.number, info.description, info.modality, info.n_images) == (
        3, "AX T2 FLAIR", "MR", 12)
    assert info.acq_date is not None and info.acq_date.isoformat() == "2024-01-31"
    assert (info.scanner, info.field_strength_t) == ("Siemens Avanto", 1.5)
    assert info.label == "series 3 'AX T2 FLAIR' (12 images)"
    text = repr(out) + repr(info)
    assert not [v for v in PHI.values() if v in text]


@pytest.mark.parametrize("converter", CONVERTERS)
def test_no_identifying_value_in_written_files_or_left_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converter: str) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    spec = SeriesSpec()
    write_series(tmp_path / "dcm", spec)
    out = read_dicom(zip_folder(tmp_path / "dcm", tmp_path / "s.zip"),
                     converter=converter)  # type: ignore[arg-type]
    target = tmp_path / "out" / "flair.nii.gz"
    io.save_volume(target, out.volume.data, out.volume.affine, np.int16)
    raw = gzip.decompress(target.read_bytes())
    for value in [*PHI.values(), "Doe", "4711", "1971"]:
        assert value.encode() not in raw and value.encode() not in target.read_bytes()
    assert list(scratch.iterdir()) == []  # extraction and dcm2niix folders are gone


# ----------------------------------------------------------------------------- series choice
def test_series_picked_by_description_or_listed_for_the_user(tmp_path: Path) -> None:
    flair = SeriesSpec(description="sag 3D FLAIR", seed=1)
    t1 = SeriesSpec(description="T1 MPRAGE", seed=2)
    write_series(tmp_path / "dcm" / "a", flair)
    write_series(tmp_path / "dcm" / "b", t1)
    source = zip_folder(tmp_path / "dcm", tmp_path / "exam.zip")
    assert [s.description for s in dicom.list_series(source)] == ["sag 3D FLAIR", "T1 MPRAGE"]
    got = read_dicom(source, modality="FLAIR", converter="pydicom")
    np.testing.assert_array_equal(got.volume.data, flair.values)
    got = read_dicom(source, modality="T1w", converter="pydicom")
    np.testing.assert_array_equal(got.volume.data, t1.values)
    with pytest.raises(SeriesChoiceError, match=r"2 series found.*choose one") as info:
        read_dicom(source, modality="T2w", converter="pydicom")
    assert {s.uid for s in info.value.series} == {flair.series_uid, t1.series_uid}
    got = read_dicom(source, modality="T2w", series_uid=t1.series_uid, converter="pydicom")
    np.testing.assert_array_equal(got.volume.data, t1.values)
    with pytest.raises(SeriesChoiceError, match="not in this source"):
        read_dicom(source, series_uid="1.2.3", converter="pydicom")


# ----------------------------------------------------------------------------- bad input
def _bad(source: Path, match: str, **kwargs: object) -> InputError:
    with pytest.raises(InputError, match=match) as info:
        read_dicom(source, converter="pydicom", **kwargs)  # type: ignore[arg-type]
    assert info.value.path == source
    return info.value


def test_zip_with_path_traversal_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "dcm", SeriesSpec())
    for name in ("../evil.dcm", "/abs/evil.dcm", "C:/evil.dcm", "a/../../evil.dcm"):
        bad = tmp_path / "bad.zip"
        zip_folder(tmp_path / "dcm", bad)
        with zipfile.ZipFile(bad, "a") as zf:
            zf.writestr(name, b"x")
        _bad(bad, "unsafe member name")
    assert not (tmp_path / "evil.dcm").exists()


def test_zip_size_and_count_caps_and_zip_bomb(tmp_path: Path) -> None:
    write_series(tmp_path / "dcm", SeriesSpec())
    source = zip_folder(tmp_path / "dcm", tmp_path / "s.zip")
    _bad(source, "12 entries; at most 5", limits=DicomLimits(max_files=5))
    _bad(source, "bytes uncompressed; at most 100", limits=DicomLimits(max_file_bytes=100))
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for n in range(3):
            zf.writestr(f"zeros{n}.dcm", bytes(8 * 2**20))
    assert bomb.stat().st_size < 100_000
    _bad(bomb, "expands to 25165824 bytes", limits=DicomLimits(max_total_bytes=2**24))
    _bad(tmp_path / "dcm", "larger than the limits", limits=DicomLimits(max_total_bytes=5000))


def test_sources_without_dicom_images(tmp_path: Path) -> None:
    empty = tmp_path / "notes.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "hello")
        zf.writestr("sub/", "")
    _bad(empty, "no DICOM images found")
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"PK\x03\x04 not really a zip")
    _bad(fake, "not a readable zip file")
    _bad(tmp_path / "missing.zip", "not found")


def test_missing_slice_is_an_error(tmp_path: Path) -> None:
    write_series(tmp_path / "dcm", SeriesSpec(), skip=[5, 6])
    error = _bad(zip_folder(tmp_path / "dcm", tmp_path / "s.zip"),
                 r"series 3 'AX FLAIR' \(10 images\): 2 slice\(s\) missing")
    assert "first gap after slice 5" in str(error)


def test_non_uniform_spacing_mixed_orientation_and_repeated_positions(tmp_path: Path) -> None:
    spec = SeriesSpec()
    write_series(tmp_path / "a", spec, positions={11: spec.position(11.4)})
    _bad(tmp_path / "a", "non-uniform slice spacing")
    write_series(tmp_path / "b", spec, orientation={3: (0, 1, 0, 0, 0, -1)})
    _bad(tmp_path / "b", "2 different orientations")
    write_series(tmp_path / "c", spec, positions={4: spec.position(3)})
    _bad(tmp_path / "c", "share a slice position")
    write_series(tmp_path / "d", spec, positions={4: spec.position(4) + np.array([0.0, 2.0, 0.0])})
    _bad(tmp_path / "d", "not stacked along their normal")


@pytest.mark.parametrize("converter", CONVERTERS)
def test_truncated_file_names_the_member(tmp_path: Path, converter: str) -> None:
    paths = write_series(tmp_path / "dcm", SeriesSpec())
    whole = paths[0].read_bytes()
    paths[0].write_bytes(whole[:-100])  # pixel data cut short
    source = zip_folder(tmp_path / "dcm", tmp_path / "s.zip")
    with pytest.raises(InputError, match=f"DICOM/{paths[0].name}"):
        read_dicom(source, converter=converter)  # type: ignore[arg-type]
    paths[0].write_bytes(whole[:-(16 * 14 * 2 + 12)])  # everything but the pixel data
    _bad(tmp_path / "dcm", f"{paths[0].name}: MR image without pixel data")


def test_slice_geometry_edge_cases() -> None:
    iop = [1, 0, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="at least 3"):
        slice_geometry(np.zeros((1, 3)), iop, [1, 1])
    with pytest.raises(ValueError, match="orthogonal unit vectors"):
        slice_geometry(np.c_[np.zeros((3, 2)), [0, 1, 2]], [1, 0, 0, 1, 0, 0], [1, 1])
    order, affine = slice_geometry(np.c_[np.zeros((4, 2)), [3.0, 0.0, 9.0, 6.0]], iop,
                                   [0.5, 0.8])
    assert order.tolist() == [1, 0, 3, 2]
    np.testing.assert_allclose(affine, np.diag([-0.8, -0.5, 3.0, 1.0]))
