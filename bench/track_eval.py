"""Evaluate lesion-change tracking (the ``track`` pipeline); prints and saves JSON.

Usage::

    python bench/track_eval.py [--demo data/demo] [--intervals 12]
        [--methods joint difference network] [--maps-cache DIR] [--change-models-dir DIR]
        [--synthetic-pairs 6] [--name track_eval]

A method is ``joint`` (the default settings), ``difference``, ``joint+intensity=off`` (the joint
rule without intensity-led new lesions), ``joint+intensity=Z,RATIO,MM3`` (with them at those
settings; see :class:`ms_core.longitudinal.tracking.TrackParams`), ``network`` (the change-detection
network, white-matter harmonisation), ``network+harmonisation=histogram`` or
``network+threshold=T``. ``--change-models-dir`` scores a candidate change network from another
models folder (its ``lesion_change`` entry) instead of the shipped one.

- **Real pair**: open_ms_data ``longitudinal/raw/patient12`` (Lesjak et al. 2016,
  Neuroinformatics 14:403-420; Lesjak et al. 2018, Neuroinformatics 16:51-63; CC-BY). Our change
  mask (on the follow-up FLAIR's grid) is mapped into the dataset's common space with its own
  ITK transform ``study2_FLAIR_to_common_space.txt`` (nearest neighbour) and compared with
  ``gt.nii.gz``: voxel Dice and lesion-wise F1 (any-voxel overlap).
- **Demo study**: consecutive visit pairs; a true new lesion (ground truth status ``new``,
  >= 27 mm^3) is detected when new-lesion tissue of the change mask (label 1) overlaps it; a
  lesion reported ``new`` that overlaps no true new or enlarging lesion is a false new lesion.
  Each missed true new lesion is listed with its volume, location and whether either visit's
  segmentation covers it (``segmented``: false means the network missed it, true the change
  rule). ``new_lesion_f1`` = 2 TP / (2 TP + false new + missed).
- **Synthetic no-change pairs** (``--synthetic-pairs N``, the first N demo visits): the visit
  against itself moved rigidly (1.5°, 1 mm), with fresh Rician noise (3 % of the brain
  median) and another smooth bias field: every lesion reported new is false.
- **Synthetic protocol-change pairs**: each of the first N demo intervals with its baseline
  re-acquired as a thick-slice 2D scan (Gaussian blur of 4 mm FWHM along z), another contrast
  (gamma 0.8) and bias field; scored like the demo pairs.

``--maps-cache DIR`` keeps each pair's registered maps
(:class:`ms_core.longitudinal.tracking.PairMaps`, about 150 MB a pair) in ``DIR``, keyed by the
pair, the model's sha256 and the segmentation settings, so a change-rule experiment re-runs in
minutes instead of an hour; the stage seconds reported for a cached pair are those of the run that
filled the cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ms_core.foundation.domain import Volume  # noqa: E402
from ms_core.foundation.io import (  # noqa: E402
    atomic_write_text,
    from_sitk,
    load_volume,
    read_json,
    to_sitk,
    write_json,
)
from ms_core.imaging.preprocess import Grid  # noqa: E402
from ms_core.longitudinal.tracking import (  # noqa: E402
    CHANGE_MODEL,
    PairMaps,
    PairRegistration,
    TrackParams,
    TrackResult,
    detect_changes,
    prepare_pair,
)
from ms_core.segmentation.evaluate import dice, lesion_detection  # noqa: E402
from ms_core.segmentation.inference import load_onnx_model  # noqa: E402
from ms_core.segmentation.model_store import MODELS_DIR, load_model_card, load_segmentation_card  # noqa: E402
from ms_core.segmentation.segment import SegmentParams  # noqa: E402
from ms_core.study.derivatives import truth_dir  # noqa: E402
from ms_core.study.layout import image_path, load_study  # noqa: E402

P12 = REPO.parent / "shared" / "data" / "open_ms_data" / "longitudinal" / "raw" / "patient12"


def to_common_space(change: np.ndarray, affine: np.ndarray, transform_file: Path,
                    reference: Path) -> np.ndarray:
    """Resample a follow-up-grid mask into the dataset's common space (nearest)."""
    import nibabel as nib
    import SimpleITK as sitk

    ref = nib.load(str(reference))
    ref_img = to_sitk(np.zeros(ref.shape[:3], np.uint8), ref.affine)
    tx = sitk.ReadTransform(str(transform_file))
    out = sitk.Resample(to_sitk(change.astype(np.uint8), affine), ref_img, tx,
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return from_sitk(out)[0]


def cached_maps(cache: Path | None, key: str, base: Any, follow: Any, model: Any) -> PairMaps:
    """:func:`prepare_pair` with the default settings, or its maps from ``cache`` (see the
    module docstring); ``key`` names the pair."""
    if cache is None:
        return prepare_pair(base, follow, SegmentParams(), model)
    import hashlib

    tag = f"{key}|{model.card.sha256 if model is not None else 'baseline'}|{SegmentParams()!r}"
    path = cache / f"{hashlib.sha256(tag.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        grid = Grid(tuple(int(n) for n in z["brain"].shape), z["affine"])  # type: ignore[arg-type]
        return PairMaps(grid, z["brain"], z["f_norm"], z["b_norm"], z["prob_f"], z["prob_b"],
                        PairRegistration(z["f_to_b"], float(meta["ncc"])), meta["provider"],
                        meta["model"], meta["seconds"],
                        z["to_mni"] if "to_mni" in z.files else None)
    maps = prepare_pair(base, follow, SegmentParams(), model)
    cache.mkdir(parents=True, exist_ok=True)
    meta = {"pair": key, "ncc": maps.registration.ncc, "provider": maps.provider,
            "model": maps.model, "seconds": maps.seconds}
    tmp = path.with_suffix(".tmp.npz")
    arrays = {"brain": maps.brain, "f_norm": maps.f_norm, "b_norm": maps.b_norm,
              "prob_f": maps.prob_f, "prob_b": maps.prob_b, "affine": maps.grid.affine,
              "f_to_b": maps.registration.followup_to_baseline,
              "meta": np.array(json.dumps(meta))}
    if maps.to_mni is not None:
        arrays["to_mni"] = maps.to_mni
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)
    return maps


def _params(method: str) -> TrackParams:
    """``joint``, ``difference``, ``joint+intensity=off`` (the joint rule without intensity-led
    new lesions), ``joint+intensity=Z,RATIO,MM3`` (with them at these settings:
    :attr:`TrackParams.intensity_new_z` and the two after it), ``network``,
    ``network+harmonisation=H`` or ``network+threshold=T``."""
    if method.startswith("network"):
        _, _, spec = method.partition("+")
        key, _, value = spec.partition("=")
        if key == "harmonisation":
            return TrackParams(method="network", harmonisation=value)
        if key == "threshold":
            return TrackParams(method="network", change_threshold=float(value))
        return TrackParams(method="network")
    name, _, spec = method.partition("+intensity=")
    if not spec:
        return TrackParams(method=name)  # type: ignore[arg-type]
    if spec == "off":
        return TrackParams(method=name, intensity_new_z=None)  # type: ignore[arg-type]
    z, ratio, mm3 = (float(x) for x in spec.split(","))
    return TrackParams(method=name, intensity_new_z=z,  # type: ignore[arg-type]
                       intensity_new_ratio=ratio, intensity_new_mm3=mm3)


#: The change network scored by ``network`` methods (``--change-models-dir``; None: shipped).
CHANGE_NET: dict[str, Any] = {"model": None}


def _detect(maps: PairMaps, base: Any, follow: Any, method: str) -> TrackResult:
    return detect_changes(maps, base, follow, _params(method), change_model=CHANGE_NET["model"])


def patient12(methods: list[str], model: Any, cache: Path | None = None) -> dict[str, Any]:
    """Track the real pair once per method (the probability maps are computed once)."""
    import nibabel as nib

    base = load_volume(P12 / "study1_FLAIR.nii.gz", "FLAIR")
    follow = load_volume(P12 / "study2_FLAIR.nii.gz", "FLAIR")
    gt = np.asarray(nib.load(str(P12 / "gt.nii.gz")).dataobj) > 0
    t0 = time.perf_counter()
    maps = cached_maps(cache, "patient12", base, follow, model)
    prep = time.perf_counter() - t0 if cache is None else sum(maps.seconds.values())
    out: dict[str, Any] = {}
    for method in methods:
        t1 = time.perf_counter()
        res = _detect(maps, base, follow, method)
        common = to_common_space(res.change_mask, res.affine,
                                 P12 / "study2_FLAIR_to_common_space.txt", P12 / "gt.nii.gz")
        entry: dict[str, Any] = {
            "seconds": round(prep + time.perf_counter() - t1, 1), "stage_seconds": res.seconds,
            "registration_ncc": res.registration.ncc,
            "status_counts": res.table.status.value_counts().to_dict()}
        # The reference marks lesion change in both directions (growth and shrinkage).
        for name, pred in (("any_change", common > 0), ("new_or_enlarging_only", common == 1)):
            entry[name] = {"dice": round(dice(pred, gt), 4), **lesion_detection(pred, gt)}
        out[method] = entry
        print("patient12", method, json.dumps(entry), flush=True)
    return out


def _score_demo(root: Path, pid: str, prev: str, cur: str, res: TrackResult,
                seconds: float) -> dict[str, Any]:
    from ms_core.foundation.io import load_lesion_mask

    tdir = truth_dir(root, pid, cur)
    truth = read_json(tdir / "truth.json")
    labels = load_lesion_mask(tdir / "lesion_labels.nii.gz").labels
    voxel_mm3 = float(abs(np.linalg.det(res.affine[:3, :3])))
    status = {int(les["lesion_id"]): les["status"] for les in truth["lesions"]}
    new_ids = [i for i, s in status.items()
               if s == "new" and (labels == i).sum() * voxel_mm3 >= 27]
    changed_ids = [i for i, s in status.items() if s in ("new", "enlarging")]
    new_tissue = res.change_mask == 1
    voxels = {i: labels == i for i in new_ids}
    hit = {i: bool(new_tissue[v].any()) for i, v in voxels.items()}
    found = sum(hit.values())
    # Why a true new lesion was missed: not segmented at all (the network), or segmented but
    # not reported as new (the change rule).
    where = {int(les["lesion_id"]): les.get("location") for les in truth["lesions"]}
    missed = [{"lesion_id": i, "volume_mm3": round(float(v.sum() * voxel_mm3), 1),
               "location": where[i], "segmented": bool(res.lesion_ids[v].any())}
              for i, v in voxels.items() if not hit[i]]
    true_change = np.isin(labels, changed_ids)
    reported_new = res.table.lesion_id[res.table.status == "new"].tolist()
    false = [j for j in reported_new if not true_change[res.lesion_ids == j].any()]
    return {"pair": f"{pid} {prev}->{cur}", "true_new_ge27": len(new_ids), "detected": found,
            "false_new": len(false), "missed_new": missed, "seconds": round(seconds, 1),
            "registration_ncc": res.registration.ncc, "qc": res.qc,
            "stage_seconds": res.seconds}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n_new = sum(r["true_new_ge27"] for r in rows)
    tp = sum(r["detected"] for r in rows)
    errors = sum(r["false_new"] for r in rows) + n_new - tp
    return {"pairs": rows, "n_pairs": len(rows), "true_new_ge27": n_new,
            "detection_rate": tp / n_new if n_new else None,
            "new_lesion_f1": 2 * tp / (2 * tp + errors) if 2 * tp + errors else None,
            "false_new_per_interval": float(np.mean([r["false_new"] for r in rows])),
            "median_seconds": float(np.median([r["seconds"] for r in rows]))}


def _smooth_bias(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float
                 ) -> np.ndarray:
    """A smooth multiplicative field exp(N(0, amplitude)) varying over about a third of the
    field of view."""
    from scipy import ndimage as ndi

    coarse = rng.normal(0.0, amplitude, (4, 4, 4))
    zoom = [s / 4 for s in shape]
    return np.asarray(np.exp(ndi.zoom(coarse, zoom, order=3, mode="nearest")), np.float32)


def _rician(rng: np.random.Generator, data: np.ndarray, sigma: float) -> np.ndarray:
    n1 = rng.standard_normal(data.shape, dtype=np.float32)
    n2 = rng.standard_normal(data.shape, dtype=np.float32)
    return np.asarray(np.sqrt((data + sigma * n1) ** 2 + (sigma * n2) ** 2), np.float32)


def rescan(vol: Volume, seed: int) -> Volume:
    """``vol`` scanned again with no change: moved rigidly (1.5°, 1 mm; the image resampled
    linearly about its centre), fresh Rician noise (3 % of the median of its non-zero voxels)
    and another bias field (amplitude 0.1)."""
    from scipy import ndimage as ndi
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    rot = Rotation.from_rotvec(np.deg2rad(1.5) * _unit(rng)).as_matrix()
    centre = (np.asarray(vol.shape) - 1) / 2.0
    spacing = np.asarray(vol.spacing_mm)
    shift_vox = _unit(rng) * 1.0 / spacing
    moved = ndi.affine_transform(vol.data, rot, offset=centre - rot @ centre + shift_vox,
                                 order=1, mode="constant")
    level = float(np.median(vol.data[vol.data > 0]))
    data = _rician(rng, moved * _smooth_bias(rng, vol.shape, 0.1), 0.03 * level)
    return Volume(data * (moved > 0), vol.affine, vol.modality, vol.source)


def reacquire_2d(vol: Volume, seed: int) -> Volume:
    """``vol`` as another protocol would give it: a thick-slice 2D scan (Gaussian blur of
    4 mm FWHM along the third voxel axis), another contrast (gamma 0.8 of the intensity
    relative to its median) and bias field (amplitude 0.15)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    sigma = [0.0, 0.0, 4.0 / 2.355 / vol.spacing_mm[2]]
    blurred = ndi.gaussian_filter(vol.data, sigma)
    level = float(np.median(vol.data[vol.data > 0]))
    data = level * np.power(np.maximum(blurred, 0.0) / level, 0.8)
    data = _rician(rng, data * _smooth_bias(rng, vol.shape, 0.15), 0.02 * level)
    return Volume(data * (vol.data > 0), vol.affine, vol.modality, vol.source)


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return np.asarray(v / np.linalg.norm(v))


def demo_visits(root: Path, limit: int) -> list[tuple[str, str]]:
    """The first ``limit`` (participant, session) visits of the demo study."""
    return [(pid, v.session_id) for pid, vs in load_study(root).visits.items()
            for v in vs][:limit]


def demo_intervals(root: Path, limit: int) -> list[tuple[str, str, str]]:
    """The first ``limit`` consecutive (participant, earlier, later session) intervals."""
    return [(pid, a.session_id, b.session_id) for pid, vs in load_study(root).visits.items()
            for a, b in itertools.pairwise(vs)][:limit]


def rescan_pair(root: Path, i: int, pid: str, ses: str) -> tuple[str, Volume, Volume]:
    """The ``i``-th no-change pair: the visit and :func:`rescan` of it, with its maps-cache
    key."""
    base = load_volume(image_path(root, pid, ses, "FLAIR"), "FLAIR")
    return f"{root.resolve()} {pid} {ses} rescan", base, rescan(base, 1000 + i)


def interval_pair(root: Path, i: int, pid: str, prev: str, cur: str,
                  make_base: Callable[[Volume, int], Volume] | None = None,
                  key_suffix: str = "") -> tuple[str, Volume, Volume]:
    """The ``i``-th interval's baseline (re-made by ``make_base``, seeded by ``i``, when given)
    and follow-up, with its maps-cache key."""
    base = load_volume(image_path(root, pid, prev, "FLAIR"), "FLAIR")
    if make_base is not None:
        base = make_base(base, 2000 + i)
    follow = load_volume(image_path(root, pid, cur, "FLAIR"), "FLAIR")
    return f"{root.resolve()} {pid} {prev} {cur}{key_suffix}", base, follow


def synthetic_pairs(root: Path, methods: list[str], model: Any, limit: int,
                    cache: Path | None = None) -> dict[str, Any]:
    """No-change (rescan) and protocol-change pairs made from the demo's visits (see the
    module docstring)."""
    no_change: dict[str, list[int]] = {m: [] for m in methods}
    for i, (pid, ses) in enumerate(demo_visits(root, limit)):
        key, base, follow = rescan_pair(root, i, pid, ses)
        maps = cached_maps(cache, key, base, follow, model)
        for method in methods:
            res = _detect(maps, base, follow, method)
            no_change[method].append(int((res.table.status == "new").sum()))
            print("no-change", method, pid, ses, no_change[method][-1], flush=True)
    protocol = _scored_pairs(root, demo_intervals(root, limit), methods, model, cache,
                             "protocol-change", reacquire_2d, " 2d")
    return {m: {"no_change": {"n_pairs": len(no_change[m]),
                              "false_new_per_interval": float(np.mean(no_change[m]))
                              if no_change[m] else None, "false_new": no_change[m]},
                "protocol_change": _summary(protocol[m])} for m in methods}


def _scored_pairs(root: Path, intervals: list[tuple[str, str, str]], methods: list[str],
                  model: Any, cache: Path | None, label: str,
                  make_base: Callable[[Volume, int], Volume] | None = None,
                  key_suffix: str = "") -> dict[str, list[dict[str, Any]]]:
    """Each demo interval tracked by every method and scored against the truth; with
    ``make_base`` the baseline is first re-made by it (:func:`interval_pair`)."""
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for i, (pid, prev, cur) in enumerate(intervals):
        key, base, follow = interval_pair(root, i, pid, prev, cur, make_base, key_suffix)
        t0 = time.perf_counter()
        maps = cached_maps(cache, key, base, follow, model)
        prep = time.perf_counter() - t0 if cache is None else sum(maps.seconds.values())
        for method in methods:
            t1 = time.perf_counter()
            res = _detect(maps, base, follow, method)
            row = _score_demo(root, pid, prev, cur, res, prep + time.perf_counter() - t1)
            rows[method].append(row)
            print(label, method, json.dumps(row), flush=True)
    return rows


def demo_pairs(root: Path, methods: list[str], model: Any, limit: int,
               cache: Path | None = None) -> dict[str, Any]:
    """Consecutive visit pairs of the demo study, each method scored against the truth."""
    rows = _scored_pairs(root, demo_intervals(root, limit), methods, model, cache, "demo")
    return {m: _summary(r) for m, r in rows.items()}


def write_card_evaluation(models_dir: Path, results: dict[str, Any]) -> None:
    """The ``network`` method's figures as ``evaluation`` of the ``lesion_change`` card (the
    card is not hashed: its ONNX file's sha256 stays as it is)."""
    card_path = Path(models_dir) / CHANGE_MODEL / "model.json"
    card = read_json(card_path)
    net = "network"
    brief = {k: v for k, v in results.get("demo", {}).get(net, {}).items() if k != "pairs"}
    synthetic = results.get("synthetic", {}).get(net, {})
    card["evaluation"] = {
        "command": "python bench/track_eval.py " + " ".join(sys.argv[1:]),
        "commit": results["machine"]["commit"], "machine": results["machine"],
        "segmentation_model": results.get("model"),
        "patient12": results.get("patient12", {}).get(net),
        "demo": brief or None,
        "protocol_change": {k: v for k, v in synthetic.get("protocol_change", {}).items()
                            if k != "pairs"} or None,
        "no_change": synthetic.get("no_change"),
    }
    write_json(card_path, card)
    from training.change.export import card_markdown

    atomic_write_text(card_path.with_name("MODEL_CARD.md"), card_markdown(card))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--intervals", type=int, default=12, help="demo visit pairs to evaluate")
    ap.add_argument("--methods", nargs="+", default=["joint", "difference"])
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--maps-cache", type=Path, default=None,
                    help="keep each pair's registered maps here (see above)")
    ap.add_argument("--change-models-dir", type=Path, default=None,
                    help="models folder whose lesion_change network the network methods use "
                         "(default: the shipped one)")
    ap.add_argument("--synthetic-pairs", type=int, default=0,
                    help="no-change and protocol-change pairs made from the demo (see above)")
    ap.add_argument("--name", default="track_eval",
                    help="results file name under bench/results (default track_eval)")
    ap.add_argument("--write-card", action="store_true",
                    help="store the 'network' method's figures as the evaluation of the change "
                         "network's card (the --change-models-dir one, else the shipped one)")
    args = ap.parse_args(argv)
    if args.change_models_dir is not None:
        CHANGE_NET["model"] = load_onnx_model(
            load_model_card(CHANGE_MODEL, args.change_models_dir), "cpu")
    # The code that runs: recorded at the start (a long run may outlive later commits).
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    card = load_segmentation_card()
    model = load_onnx_model(card, "cpu")
    results: dict[str, Any] = {"model": {"version": card.version, "sha256": card.sha256},
                               "provider": model.provider, "methods": args.methods}
    if P12.exists():
        results["patient12"] = patient12(args.methods, model, args.maps_cache)
    if not args.skip_demo:
        results["demo"] = demo_pairs(args.demo, args.methods, model, args.intervals,
                                     args.maps_cache)
    if args.synthetic_pairs > 0:
        results["synthetic"] = synthetic_pairs(args.demo, args.methods, model,
                                               args.synthetic_pairs, args.maps_cache)
    if any(m.startswith("network") for m in args.methods):
        net = CHANGE_NET["model"] or load_onnx_model(load_model_card(CHANGE_MODEL), "cpu")
        results["change_model"] = {"version": net.card.version, "sha256": net.card.sha256}
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "commit": commit}
    write_json(REPO / "bench" / "results" / f"{args.name}.json", results)
    if args.write_card and "network" in args.methods:
        write_card_evaluation(args.change_models_dir or MODELS_DIR, results)
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
