"""Fuzzing of the NIfTI readers: mutated headers and bytes raise InputError and nothing else.

Small valid files (16^3, made with nibabel) are mutated by class: header fields (dim, pixdim,
datatype, bitpix, vox_offset, scl_slope/scl_inter, qform/sform codes and values, magic, ...),
flipped bytes, truncation, gzip corruption, poisoned voxel values (NaN, Inf, constant, huge,
negative, fractional), wrong suffix and random bytes. Each file goes through
:func:`read_nifti_header`, :func:`load_volume` (plain, ``canonical=True``, and volume 1 of a
4D file) and :func:`load_lesion_mask`. The only exception allowed is :class:`InputError` naming
the file; each example has a hard time budget (no hang), and the peak RSS of the whole campaign
must stay small (the voxel cap and the size-vs-header checks stop allocations driven by a lying
header).

CI runs ``FUZZ_EXAMPLES`` (default 280, split over the classes) derandomised examples;
``make fuzz`` runs 5000 and writes the counts by class to ``FUZZ_REPORT`` (docs/reliability.md
quotes them).

With atheris installed, ``python tests/test_fuzz.py -runs=20000`` runs a coverage-guided
campaign on the same readers (libFuzzer options apply).
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import inspect
import json
import os
import resource
import signal
import sys
import tempfile
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ms_core.foundation import io
from ms_core.foundation.errors import InputError

#: Requested examples, split evenly over the classes (``wrong_suffix`` has only 10 distinct
#: inputs, so hypothesis stops it early): the CI default gives 250 examples, 1000 reader calls.
N_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "280"))
#: Hard wall-clock budget of one example (three readers on a 16^3 file take milliseconds).
EXAMPLE_BUDGET_S = float(os.environ.get("FUZZ_EXAMPLE_BUDGET_S", "20"))
#: Peak-RSS growth allowed over the whole campaign. A lying header could otherwise ask for
#: 512^3 float64 = 1 GiB per read.
MAX_RSS_GROWTH_MB = 300
HEADER_SIZE = 348
SHAPE = (16, 16, 16)

#: (field, strategy of replacement values) of the NIfTI-1 header, in its own dtypes.
_I16 = st.one_of(st.sampled_from([-32768, -1, 0, 1, 2, 3, 4, 5, 7, 8, 16, 17, 255, 512, 32767]),
                 st.integers(-32768, 32767))
_F32 = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.01, 0.5, 2.0, 11.0, 1e-30, 1e30, 3.4e38,
                     float("nan"), float("inf"), float("-inf")]),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
_DATATYPES = st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536,
                              1792, 2048, 2304, 3, 255, -1, 32767])
_CODES = st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 99])
HEADER_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "dim": st.lists(_I16, min_size=8, max_size=8),
    "dim0": _I16,
    "dim_xyz": st.tuples(st.sampled_from([1, 2, 3]), _I16),
    "pixdim": st.lists(_F32, min_size=8, max_size=8),
    "pixdim_xyz": st.tuples(st.sampled_from([0, 1, 2, 3]), _F32),
    "datatype": _DATATYPES,
    "bitpix": _I16,
    "vox_offset": _F32,
    "scl_slope": _F32,
    "scl_inter": _F32,
    "qform_code": _CODES,
    "sform_code": _CODES,
    "quatern": st.tuples(st.sampled_from(["quatern_b", "quatern_c", "quatern_d", "qoffset_x"]),
                         _F32),
    "srow": st.tuples(st.sampled_from(["srow_x", "srow_y", "srow_z"]), st.integers(0, 3), _F32),
    "sizeof_hdr": st.sampled_from([0, -1, 348, 540, 1 << 30]),
    "magic": st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0", b"xxxx"]),
}
CLASSES = ("header_field", "byte_flip", "truncate", "gzip_corrupt", "data_values",
           "wrong_suffix", "random_bytes")

#: Outcomes per class and reader, for the report: {(class, reader, outcome): count}.
COUNTS: Counter[tuple[str, str, str]] = Counter()
EXAMPLES: Counter[str] = Counter()
#: What the InputErrors were raised from (our own check, or the library exception converted).
CAUSES: Counter[tuple[str, str]] = Counter()
#: Why, by the start of the message: {(class, reason): count}.
REASONS: Counter[tuple[str, str]] = Counter()
_REASON_KEYS = ("file is truncated", "truncated or corrupt", "cannot read NIfTI header",
                "unsupported voxel data type", "expected a 3D", "empty axis", "over the limit",
                "bad orientation", "voxel size", "NaN or Inf", "image is empty",
                "image is constant", "non-integer", "negative labels", "largest id",
                "expected a NIfTI", "does not exist", "empty file")


# ----------------------------------------------------------------------------- seed files
def _seed_images() -> dict[str, bytes]:
    """Uncompressed bytes of small valid NIfTI-1 files of each kind we read."""
    rng = np.random.default_rng(0)
    aff = np.diag([0.9, 1.1, 3.0, 1.0])
    aff[:3, 3] = (-7.0, -8.0, -20.0)
    flair = (rng.random(SHAPE, dtype=np.float32) * 100.0 + 1.0).astype(np.float32)
    t1 = nib.Nifti1Image(flair.astype(np.float64) * 7.3, aff)
    t1.header.set_data_dtype(np.int16)  # nibabel stores it scaled (scl_slope/scl_inter)
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:7, 4:7, 4:7] = 1
    labels[10:12, 9:13, 2:4] = 2
    rotated = aff.copy()
    rotated[:3, :3] = rotated[:3, :3] @ np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    seeds = {
        "flair_f32": nib.Nifti1Image(flair, aff),
        "t1_i16_scaled": t1,
        "mask_u8": nib.Nifti1Image(labels, aff),
        "rotated_f64": nib.Nifti1Image(flair.astype(np.float64), rotated),
        "fourd_f32": nib.Nifti1Image(np.stack([flair, flair], axis=-1), aff),
    }
    out = {}
    for name, img in seeds.items():
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
        out[name] = img.to_bytes()
    return out


SEEDS = _seed_images()


def _set_fields(raw: bytes, changes: list[tuple[str, Any]]) -> bytes:
    hdr = np.frombuffer(raw[:HEADER_SIZE], dtype=nib.nifti1.header_dtype).copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for key, value in changes:
            if key == "dim0":
                hdr["dim"][0][0] = value
            elif key == "dim_xyz":
                hdr["dim"][0][value[0]] = value[1]
            elif key == "pixdim_xyz":
                hdr["pixdim"][0][value[0]] = value[1]
            elif key == "quatern":
                hdr[value[0]] = value[1]
            elif key == "srow":
                hdr[value[0]][0][value[1]] = value[2]
            else:
                hdr[key] = value
    return hdr.tobytes() + raw[HEADER_SIZE:]


def _flip(raw: bytes, flips: list[tuple[int, int]]) -> bytes:
    buf = bytearray(raw)
    for pos, mask in flips:
        buf[pos % len(buf)] ^= mask
    return bytes(buf)


def _gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=1, mtime=0)


# ----------------------------------------------------------------------------- mutations
@st.composite
def mutated_file(draw: st.DrawFn, kind: str) -> tuple[str, bytes, str]:
    """``(suffix, file bytes, seed name)`` of one NIfTI file mutated by class ``kind``."""
    seed = draw(st.sampled_from(sorted(SEEDS)))
    raw = SEEDS[seed]
    gz = draw(st.booleans())
    suffix = ".nii.gz" if gz else ".nii"
    flip = st.tuples(st.integers(0, 1 << 20), st.integers(1, 255))
    if kind == "header_field":
        keys = draw(st.lists(st.sampled_from(sorted(HEADER_FIELDS)), min_size=1, max_size=3))
        raw = _set_fields(raw, [(k, draw(HEADER_FIELDS[k])) for k in keys])
    elif kind == "byte_flip":
        in_header = st.tuples(st.integers(0, HEADER_SIZE + 3), st.integers(1, 255))
        raw = _flip(raw, draw(st.lists(st.one_of(in_header, flip), min_size=1, max_size=8)))
    elif kind == "truncate":
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif kind == "data_values":
        raw = _poisoned(draw, raw)
    elif kind == "random_bytes":
        raw = draw(st.binary(min_size=1, max_size=600))
    payload = _gz(raw) if gz else raw
    if kind == "gzip_corrupt":
        suffix, payload = ".nii.gz", _corrupt_gzip(draw, _gz(raw))
    elif kind == "wrong_suffix":
        suffix = ".nii" if gz else ".nii.gz"  # gzip bytes named .nii, raw bytes named .nii.gz
    return suffix, payload, seed


def _poisoned(draw: st.DrawFn, raw: bytes) -> bytes:
    """A valid header over voxel values a converter should never write (or a constant image)."""
    values = draw(st.sampled_from(["nan", "inf", "zero", "constant", "huge", "negative",
                                   "fraction", "one_nan"]))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int16, np.uint8, np.int32]))
    data = np.ones(SHAPE, np.float64)
    data[::2] = 2.0
    data = {"nan": np.full(SHAPE, np.nan), "inf": np.full(SHAPE, np.inf),
            "zero": np.zeros(SHAPE), "constant": np.full(SHAPE, 42.0),
            "huge": data * 1e300, "negative": -data, "fraction": data * 0.37,
            "one_nan": np.where(np.arange(data.size).reshape(SHAPE) == 7, np.nan, data)}[values]
    with np.errstate(all="ignore"):
        body = data.astype(dtype)
    out = nib.Nifti1Image(np.zeros(SHAPE, dtype), np.eye(4)).to_bytes()
    if draw(st.booleans()):
        out = _set_fields(out, [("scl_slope", draw(_F32)), ("scl_inter", draw(_F32))])
    offset = int(np.frombuffer(out[:HEADER_SIZE], nib.nifti1.header_dtype)["vox_offset"][0])
    return out[:offset] + body.tobytes(order="F")


def _corrupt_gzip(draw: st.DrawFn, payload: bytes) -> bytes:
    how = draw(st.sampled_from(["truncate", "flip", "trailer", "append", "zero_run", "header"]))
    buf = bytearray(payload)
    if how == "truncate":
        return bytes(buf[:draw(st.integers(0, len(buf) - 1))])
    if how == "flip":
        pos = draw(st.integers(10, len(buf) - 9))
        buf[pos] ^= draw(st.integers(1, 255))
    elif how == "trailer":  # CRC32 and ISIZE
        pos = draw(st.integers(len(buf) - 8, len(buf) - 1))
        buf[pos] ^= draw(st.integers(1, 255))
    elif how == "append":
        buf += draw(st.binary(min_size=1, max_size=64))
    elif how == "zero_run":
        start = draw(st.integers(10, len(buf) - 1))
        buf[start:start + draw(st.integers(1, 512))] = b"\0" * len(buf[start:start + 512])
    else:  # gzip member header (magic, method, flags, mtime, ...)
        pos = draw(st.integers(0, 9))
        buf[pos] ^= draw(st.integers(1, 255))
    return bytes(buf)


# ----------------------------------------------------------------------------- readers
READERS: dict[str, Callable[[Path], object]] = {
    "read_nifti_header": io.read_nifti_header,
    "load_volume": lambda p: io.load_volume(p, "FLAIR"),
    "load_volume_canonical_prob": lambda p: io.load_volume(p, "prob", canonical=True),
    "load_lesion_mask": io.load_lesion_mask,
    "load_volume_4d_volume1": lambda p: io.load_volume(p, "prob", volume=1),
}


class ExampleTimeout(Exception):
    """An example ran past its budget: a hang, which is a failure."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def _alarm(signum: int, frame: object) -> None:
        raise ExampleTimeout(f"example ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _check_result(name: str, result: object) -> None:
    """Whatever a reader accepts is usable: 3D, under the cap, finite volumes."""
    cap = io.max_voxels()
    if isinstance(result, nib.Nifti1Image):
        assert int(np.prod(result.shape[:3])) <= cap
    elif name.startswith("load_volume"):
        data = result.data  # type: ignore[attr-defined]
        assert data.ndim == 3 and data.size <= cap and data.dtype == np.float32
        assert np.all(np.isfinite(data))
    else:
        labels = result.labels  # type: ignore[attr-defined]
        assert labels.ndim == 3 and labels.size <= cap and labels.min(initial=0) >= 0


def exercise(path: Path, kind: str = "") -> dict[str, str]:
    """Run every reader on ``path``; outcome ``ok`` or ``InputError``. Anything else raises."""
    outcomes = {}
    for name, reader in READERS.items():
        try:
            result = reader(path)
        except InputError as e:
            assert path.name in str(e), f"error does not name the file: {e}"
            outcomes[name] = "InputError"
            cause = e.__cause__
            CAUSES[(kind, "check" if cause is None else type(cause).__name__)] += 1
            reason = next((k for k in _REASON_KEYS if k in e.problem), e.problem[:40])
            REASONS[(kind, reason)] += 1
        else:
            _check_result(name, result)
            outcomes[name] = "ok"
    return outcomes


@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ms_fuzz_") as d:
        yield Path(d)
    report = os.environ.get("FUZZ_REPORT")
    if report and EXAMPLES:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(summary(), indent=2, sort_keys=True) + "\n")


def summary() -> dict[str, Any]:
    by_class: dict[str, Any] = {}
    for kind, n in sorted(EXAMPLES.items()):
        readers = {r: {o: COUNTS[(kind, r, o)] for o in ("ok", "InputError")
                       if COUNTS[(kind, r, o)]} for r in READERS}
        causes = {c: m for (k, c), m in sorted(CAUSES.items()) if k == kind}
        reasons = {c: m for (k, c), m in sorted(REASONS.items()) if k == kind}
        by_class[kind] = {"examples": n, "outcomes": readers, "error_causes": causes,
                          "error_reasons": reasons}
    return {"examples": sum(EXAMPLES.values()), "other_exceptions": 0, "by_class": by_class,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


#: Largest traced allocation peak (MiB) of any one example: the process-wide ru_maxrss cannot
#: be used in a full suite, where earlier tests have already raised the process peak.
PEAK_MB = [0.0]


@pytest.mark.parametrize("kind", CLASSES)
@settings(max_examples=-(-N_EXAMPLES // len(CLASSES)), deadline=10_000, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_nifti_raises_only_input_error(fuzz_dir: Path, kind: str, data: st.DataObject
                                               ) -> None:
    suffix, payload, seed = data.draw(mutated_file(kind), label="file")
    path = fuzz_dir / f"case{suffix}"
    path.write_bytes(payload)
    tracemalloc.start()
    try:
        with time_limit(EXAMPLE_BUDGET_S):
            outcomes = exercise(path, kind)
    finally:
        PEAK_MB[0] = max(PEAK_MB[0], tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    if kind == "gzip_corrupt":  # a damaged stream that still loads must give the true voxels
        four_d = seed == "fourd_f32"
        if outcomes["load_volume_4d_volume1" if four_d else "load_volume_canonical_prob"] == "ok":
            got = io.load_volume(path, "prob", volume=1 if four_d else None).data
            img = nib.Nifti1Image.from_bytes(SEEDS[seed])
            want = np.asanyarray(img.dataobj).astype(np.float32)
            np.testing.assert_array_equal(got, want[..., 1] if four_d else want)
    EXAMPLES[kind] += 1
    for reader, outcome in outcomes.items():
        COUNTS[(kind, reader, outcome)] += 1


def test_fuzz_campaign_memory_stayed_bounded(fuzz_dir: Path) -> None:
    # Runs after the campaign (file order): no example allocated more than the bound (numpy and
    # Python allocations are traced; a lying header must not make the readers allocate).
    assert 0.0 < PEAK_MB[0] < MAX_RSS_GROWTH_MB
    if len(EXAMPLES) == len(CLASSES) and N_EXAMPLES >= 280:
        assert sum(EXAMPLES.values()) >= 200


def test_seed_files_are_accepted(fuzz_dir: Path) -> None:
    """The unmutated seeds load, so the fuzz starts from valid files."""
    for name, raw in SEEDS.items():
        for suffix, payload in ((".nii", raw), (".nii.gz", _gz(raw))):
            path = fuzz_dir / f"seed_{name}{suffix}"
            path.write_bytes(payload)
            if name == "fourd_f32":
                with pytest.raises(InputError, match="volume="):
                    io.load_volume(path, "FLAIR")
                assert io.load_volume(path, "FLAIR", volume=1).shape == SHAPE
                continue
            assert io.load_volume(path, "prob").shape == SHAPE
            if name.startswith("mask"):
                assert io.load_lesion_mask(path).labels.shape == SHAPE


def test_lying_header_is_refused_before_allocation(fuzz_dir: Path) -> None:
    """A 16^3 file whose header says 512^3 float64 (1 GiB) is refused from its size alone."""
    raw = _set_fields(SEEDS["flair_f32"], [("dim", [3, 512, 512, 512, 1, 1, 1, 1]),
                                           ("datatype", 64), ("bitpix", 64)])
    for suffix, payload in ((".nii", raw), (".nii.gz", _gz(raw))):
        path = fuzz_dir / f"liar{suffix}"
        path.write_bytes(payload)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(InputError, match="truncated"):
            io.read_nifti_header(path)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


# ----------------------------------------------------------------------------- atheris
def _atheris_main() -> None:  # pragma: no cover - manual campaign
    import atheris

    work = Path(tempfile.mkdtemp(prefix="ms_atheris_"))

    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        buf = bytearray(SEEDS[sorted(SEEDS)[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]])
        for _ in range(fdp.ConsumeIntInRange(0, 16)):  # overwrite bytes, mostly in the header
            top = HEADER_SIZE + 3 if fdp.ConsumeBool() else len(buf) - 1
            buf[fdp.ConsumeIntInRange(0, top)] = fdp.ConsumeIntInRange(0, 255)
        if fdp.ConsumeBool():
            buf = buf[:fdp.ConsumeIntInRange(1, len(buf))]
        payload = _gz(bytes(buf)) if fdp.ConsumeBool() else bytes(buf)
        if payload[:2] == b"\x1f\x8b" and fdp.ConsumeBool():  # corrupt the gzip stream too
            cut = bytearray(payload)
            cut[fdp.ConsumeIntInRange(0, len(cut) - 1)] ^= fdp.ConsumeIntInRange(1, 255)
            payload = bytes(cut)
        path = work / ("case.nii.gz" if fdp.ConsumeBool() else "case.nii")
        path.write_bytes(payload)
        exercise(path, "atheris")

    # Coverage feedback from the code under test only (instrument_all takes minutes).
    wanted = ("nibabel.", "ms_core.foundation.io", "gzip")
    for obj in gc.get_objects():
        if (inspect.isfunction(obj) and (obj.__module__ or "").startswith(wanted)
                and obj.__code__.co_filename.endswith(".py")):
            with contextlib.suppress(Exception):
                atheris.instrument_func(obj)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    _atheris_main()
