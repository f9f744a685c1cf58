"""Deterministic synthetic MS trial study built from the MNI152 template shipped with nilearn.

``python -m ms_core demo --out data/demo`` writes a complete study (see
:mod:`ms_core.study.layout`): about 12 patients in two trial arms, 3-5 visits each over 2-6 years, a
FLAIR and a T1w per visit, and the ground truth (lesion labels with persistent ids, brain masks,
volumes, atrophy) under ``derivatives/ground_truth``. The generative model is documented in
``docs/demo_generative_model.md``; its parameters are saved in ``generator.json``.

Two phases keep it fast and reproducible:

1. :func:`plan_study` draws everything random that is not noise (clinical course, lesion
   locations and evolution, scanner protocol, head pose) from ``default_rng([seed, patient])``.
2. :func:`render_patient` synthesises the images of one patient; patients run in parallel and
   each visit's noise comes from its own seeded generator, so the output is bit-identical for a
   seed whatever the number of workers.

Image synthesis, per acquisition
--------------------------------
The anatomy is the MNI template scaled per subject (head size) and, per visit, the parenchyma
(GM, WM and lesions) shrunk about the brain centroid by the atrophy factor; the intracranial
volume is fixed, so CSF fills the gap. For every acquisition voxel the tissue fractions are
sampled through ``acquisition grid -> scanner (head pose) -> anatomy -> template``; 2D sequences
are sampled at three sub-slices per slice and averaged (slice profile / partial volume). Intensity
is a mix of per-tissue contrasts, multiplied by a smooth bias field, with Rician noise, stored as
int16 like scanner output.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ms_core import __version__
from ms_core.foundation.domain import DAYS_PER_YEAR, LESION_LOCATIONS
from ms_core.foundation.io import save_labels, save_volume, write_json, write_tsv
from ms_core.imaging.anatomy import Template, load_template, tissue_signal, world_grid
from ms_core.study.derivatives import TRUTH, pipeline_dir, truth_dir
from ms_core.study.layout import DEMO_GENERATOR, image_path

__all__ = [
    "DemoConfig",
    "LesionSpec",
    "PatientPlan",
    "VisitPlan",
    "build_demo",
    "lesion_pv",
    "plan_study",
    "render_patient",
]

log = logging.getLogger(__name__)

LOCATIONS = LESION_LOCATIONS
_LOCATION_P = (0.40, 0.25, 0.10, 0.25)
EDSS_STEPS = (0.0, *np.arange(1.0, 10.01, 0.5).tolist())
#: Volume ratio at or above which a lesion counts as enlarging (and at or below 1/x as shrinking).
ENLARGING_RATIO = 1.3

# Relative effect of each DMT on the untreated rate of new T2 lesions and of relapses.
# Sources (rounded): interferon beta-1a vs placebo, PRISMS (Lancet 1998): ~ 0.3-0.5 for new T2,
# ~0.7 for relapses; anti-CD20 (ocrelizumab) vs interferon, OPERA I/II (Hauser, NEJM 2017): new or
# enlarging T2 rate ratio 0.23, relapse rate ratio ~0.54; natalizumab vs placebo, AFFIRM (Polman,
# NEJM 2006): new or enlarging T2 -83 %, relapses -68 %.
DMT_EFFECT = {
    "none": {"lesions": 1.0, "relapses": 1.0},
    "interferon beta-1a": {"lesions": 0.45, "relapses": 0.70},
    "anti-CD20": {"lesions": 0.10, "relapses": 0.38},
    "natalizumab": {"lesions": 0.17, "relapses": 0.32},
}
ARM_DMT = {"control": "interferon beta-1a", "treatment": "anti-CD20"}

_AXIS_DIR = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0),
             "S": (0, 0, 1), "I": (0, 0, -1)}


@dataclass(frozen=True)
class Sequence:
    """One MR sequence of a scanner protocol: grid and contrast (relative signal per tissue)."""

    spacing_mm: tuple[float, float, float]
    fov_mm: tuple[float, float, float]
    orientations: tuple[str, ...]
    two_d: bool
    contrast: dict[str, float]
    noise: float


# Lesion partial volume (truth labels, T1w signal) ramps over this width (mm) around the surface.
LABEL_EDGE_MM = 1.0
# FLAIR lesion edges fade over this wider width (mm), as measured on patient26 of open_ms_data
# (bench/flair_appearance.py).
FLAIR_EDGE_MM = 3.0

# Contrasts: relative signal of GM, WM, CSF, lesion, skull, scalp (fat/muscle). FLAIR lesions are
# hyperintense to GM; on T1 (MPRAGE) lesions are hypointense to WM ("black holes" darker).
SCANNERS: dict[str, dict[str, object]] = {
    "SiteA Siemens Avanto 1.5T": {
        "field_strength_t": 1.5,
        "FLAIR": Sequence((0.9, 0.9, 3.0), (200, 235, 150), ("LAS", "LPS", "RAS"), True,
                          {"gm": 0.62, "wm": 0.48, "csf": 0.06, "lesion": 0.78, "skull": 0.05,
                           "scalp": 0.55}, 0.030),
        "T1w": Sequence((1.0, 1.0, 1.2), (235, 165, 185), ("ASL", "PSR"), False,
                        {"gm": 0.50, "wm": 0.80, "csf": 0.12, "lesion": 0.55, "skull": 0.07,
                         "scalp": 0.85}, 0.025),
    },
    "SiteB Philips Ingenia 3T": {
        "field_strength_t": 3.0,
        "FLAIR": Sequence((1.0, 1.0, 1.0), (225, 160, 175), ("ASL", "PIL"), False,
                          {"gm": 0.58, "wm": 0.46, "csf": 0.05, "lesion": 0.76, "skull": 0.05,
                           "scalp": 0.50}, 0.022),
        "T1w": Sequence((1.0, 1.0, 1.0), (175, 225, 160), ("RAS", "LAS"), False,
                        {"gm": 0.46, "wm": 0.82, "csf": 0.10, "lesion": 0.50, "skull": 0.06,
                         "scalp": 0.90}, 0.020),
    },
}


@dataclass(frozen=True)
class DemoConfig:
    """What to build. Defaults make the standard demo (12 patients)."""

    seed: int = 20261125
    n_patients: int = 12
    visits: tuple[int, int] = (3, 5)
    span_years: tuple[float, float] = (2.0, 6.0)
    atrophy_pct_per_year: tuple[float, float] = (0.3, 1.2)
    workers: int = 2


@dataclass(frozen=True, eq=False)
class LesionSpec:
    """A lesion in template (MNI mm) space; its size at a visit is ``radii_mm * scale``.

    The surface is an ellipsoid along ``axes`` (columns are unit vectors) with a rough boundary
    ``rho(u) = 1 + sum(amp * sin(3 u.dir + phase))``.
    """

    lesion_id: int
    location: str
    center_mm: np.ndarray
    axes: np.ndarray
    radii_mm: np.ndarray
    rough_dirs: np.ndarray
    rough_amp: np.ndarray
    rough_phase: np.ndarray
    t1_darkness: float

    def bbox_mm(self, scale: float) -> tuple[np.ndarray, np.ndarray]:
        reach = float(self.radii_mm.max()) * scale * 1.4 + FLAIR_EDGE_MM
        return self.center_mm - reach, self.center_mm + reach


@dataclass(frozen=True)
class VisitPlan:
    session_id: str
    acq_date: dt.date
    years: float
    edss: float
    relapses_since_last: int
    dmt: str
    scanner: str
    pose: list[list[float]]
    t1_motion: list[list[float]]
    orientation: dict[str, str]
    fov_shift_mm: list[float]
    lesion_scale: dict[int, float]
    status: dict[int, str]


@dataclass(frozen=True, eq=False)
class PatientPlan:
    index: int
    participant_id: str
    sex: str
    birth_year: int
    ms_type: str
    onset_year: int
    trial_arm: str
    activity: float
    atrophy_pct_per_year: float
    subject_scale: tuple[float, float, float]
    lesions: tuple[LesionSpec, ...]
    visits: tuple[VisitPlan, ...] = field(default=())


# ============================================================================== geometry helpers
def _rotation(angles_rad: Iterable[float]) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def _rigid(rng: np.random.Generator, rot_deg: float, shift_mm: float,
           offset: Iterable[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _rotation(np.deg2rad(rng.normal(0.0, rot_deg, 3)))
    m[:3, 3] = rng.normal(0.0, shift_mm, 3) + np.asarray(tuple(offset))
    return m


def _scaling_about(center: np.ndarray, factors: np.ndarray | float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.diag(np.broadcast_to(np.asarray(factors, dtype=float), (3,)))
    m[:3, 3] = center - m[:3, :3] @ center
    return m


def _acquisition_affine(orientation: str, spacing_mm: tuple[float, float, float],
                        shape: tuple[int, int, int], center_mm: np.ndarray) -> np.ndarray:
    dirs = np.array([_AXIS_DIR[c] for c in orientation], dtype=float).T
    aff = np.eye(4)
    aff[:3, :3] = dirs * np.asarray(spacing_mm)
    aff[:3, 3] = center_mm - aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return aff


def snap_edss(value: float) -> float:
    """Nearest valid EDSS step (0, 1.0, 1.5, ..., 10).

    >>> snap_edss(0.4), snap_edss(0.6), snap_edss(3.3)
    (0.0, 1.0, 3.5)
    """
    steps = np.asarray(EDSS_STEPS)
    return float(steps[np.argmin(np.abs(steps - value))])


# ============================================================================== lesions
def lesion_depth_mm(points_mm: np.ndarray, lesion: LesionSpec, scale: float) -> np.ndarray:
    """Signed depth (mm) of ``points_mm`` (N, 3) below the surface of ``lesion``: (N,) float.

    Positive inside, 0 on the rough ellipsoid's surface, negative outside; measured along the
    ray from the centre in units of the mean radius.
    """
    radii = lesion.radii_mm * scale
    q = ((points_mm - lesion.center_mm) @ lesion.axes) / radii
    r = np.sqrt((q * q).sum(axis=1))
    u = q / np.maximum(r, 1e-6)[:, None]
    rho = 1.0 + (lesion.rough_amp * np.sin(3.0 * (u @ lesion.rough_dirs.T)
                                           + lesion.rough_phase)).sum(axis=1)
    return np.asarray((rho - r) * float(radii.mean()))


def edge_ramp(depth_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """0.5 on the surface, ramping linearly to 0 and 1 over ``edge_mm``: float32."""
    return np.asarray(np.clip(0.5 + depth_mm / edge_mm, 0.0, 1.0), dtype=np.float32)


def lesion_pv(points_mm: np.ndarray, lesion: LesionSpec, scale: float,
              edge_mm: float = LABEL_EDGE_MM) -> np.ndarray:
    """Partial-volume fraction of ``lesion`` at ``points_mm`` (N, 3) template mm: (N,) float32.

    0.5 on the surface, ramping linearly to 0 and 1 over ``edge_mm``.
    """
    if scale <= 0:
        return np.zeros(len(points_mm), dtype=np.float32)
    return edge_ramp(lesion_depth_mm(points_mm, lesion, scale), edge_mm)


def flair_lesion_signal(lesion: LesionSpec, contrast: dict[str, float]) -> float:
    """FLAIR signal of the core of ``lesion``: the scanner's lesion contrast times 0.88-1.08.

    Lesions that are darker on T1w (more tissue destruction) are brighter on FLAIR.
    """
    return float(contrast["lesion"]) * (0.88 + (lesion.t1_darkness - 0.2) / 3.0)


def lesion_volume_ml(lesion: LesionSpec, scale: float, tpl: Template | None = None,
                     step_mm: float = 0.5) -> float:
    """Volume of ``lesion`` at ``scale`` in template space (ml), integrated on a 0.5 mm grid.

    With ``tpl``, the lesion is restricted to parenchyma (GM + WM fraction), as rendered.
    """
    if scale <= 0:
        return 0.0
    lo, hi = lesion.bbox_mm(scale)
    axes = [np.arange(a, b, step_mm) for a, b in zip(lo, hi, strict=True)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    pv = lesion_pv(pts, lesion, scale)
    if tpl is not None:
        idx = np.linalg.inv(tpl.affine)[:3, :3] @ pts.T + np.linalg.inv(tpl.affine)[:3, 3:4]
        par = ndi.map_coordinates(tpl.gm, idx, order=1) + ndi.map_coordinates(tpl.wm, idx, order=1)
        pv = pv * np.clip(par, 0.0, 1.0)
    return float(pv.sum()) * step_mm**3 / 1000.0


class _Sites:
    """Candidate lesion centres per location class, in template voxel indices."""

    def __init__(self, tpl: Template) -> None:
        x, y, z = world_grid(tpl.shape, tpl.affine)
        wm, vd, cd = tpl.wm, tpl.ventricle_dist_mm, tpl.cortex_dist_mm
        supra = z > -5
        brainstem = (np.abs(x) < 10) & (y > -40) & (y < -18) & (z > -42) & (z < -15)
        cerebellum = (np.abs(x) > 8) & (np.abs(x) < 28) & (y > -72) & (y < -48) & (z > -40) & (
            z < -25)
        self.candidates = {
            "periventricular": np.argwhere((wm > 0.6) & (vd > 1.5) & (vd < 4.0) & supra),
            "juxtacortical": np.argwhere((wm > 0.5) & (cd > 1.0) & (cd < 2.5) & (vd > 15) & supra
                                         & (z > 5)),
            "infratentorial": np.argwhere((wm > 0.5) & (brainstem | cerebellum)),
            "deep_white_matter": np.argwhere((wm > 0.9) & (cd > 5.0) & (vd > 7.0) & supra),
        }
        self.tpl = tpl


def _new_lesion(rng: np.random.Generator, sites: _Sites, lesion_id: int,
                existing: list[LesionSpec], location: str | None = None) -> LesionSpec | None:
    loc = location or str(rng.choice(LOCATIONS, p=_LOCATION_P))
    cands = sites.candidates[loc]
    tpl = sites.tpl
    r_eq = float(np.clip(rng.lognormal(math.log(3.0), 0.35), 2.2, 7.0))
    if loc in ("juxtacortical", "infratentorial"):
        r_eq = min(r_eq, 3.8)
    if loc == "periventricular":
        r_eq *= 1.15
    for _ in range(60):
        idx = cands[rng.integers(len(cands))]
        center = (tpl.affine @ np.append(idx, 1.0))[:3]
        if loc == "periventricular":
            g = np.array([
                tpl.ventricle_dist_mm[tuple(idx + d)] - tpl.ventricle_dist_mm[tuple(idx - d)]
                for d in np.eye(3, dtype=int)
            ])
            g = tpl.affine[:3, :3] @ g
            main = g / (np.linalg.norm(g) + 1e-9)  # Dawson's finger: long axis away from ventricle
            radii = np.array([1.7, 0.8, 0.8]) * r_eq / (1.7 * 0.8 * 0.8) ** (1 / 3)
            center = center + main * radii[0] * 0.5  # abuts the ventricle, lies in white matter
        else:
            main = rng.normal(size=3)
            main /= np.linalg.norm(main)
            radii = np.array([rng.uniform(1.0, 1.4), 1.0, rng.uniform(0.8, 1.0)])
            radii = radii * r_eq / np.prod(radii) ** (1 / 3)
        helper = np.array([0.0, 0.0, 1.0]) if abs(main[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        second = np.cross(main, helper)
        second /= np.linalg.norm(second)
        axes = np.stack([main, second, np.cross(main, second)], axis=1)
        if all(np.linalg.norm(center - e.center_mm) > r_eq + e.radii_mm.max() + 2.0
               for e in existing):
            dirs = rng.normal(size=(4, 3))
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            return LesionSpec(lesion_id, loc, center, axes, radii, dirs,
                              rng.uniform(0.02, 0.07, 4), rng.uniform(0, 2 * np.pi, 4),
                              float(rng.uniform(0.2, 0.8)))
    return None


# ============================================================================== planning
def _visit_status(prev: float, cur: float) -> str:
    if prev <= 0 and cur > 0:
        return "new"
    if prev > 0 and cur <= 0:
        return "disappeared"
    if prev <= 0:
        return "absent"
    ratio = (cur / prev) ** 3
    if ratio >= ENLARGING_RATIO:
        return "enlarging"
    if ratio <= 1 / ENLARGING_RATIO:
        return "shrinking"
    return "stable"


def _plan_patient(config: DemoConfig, index: int, sites: _Sites) -> PatientPlan:
    rng = np.random.default_rng([config.seed, index])
    pid = f"sub-{index + 1:02d}"
    arm = "control" if index % 2 == 0 else "treatment"
    ms_type = {3: "SP", 8: "CIS"}.get(index, "RR")
    sex = "F" if rng.random() < 0.7 else "M"
    activity = float(rng.lognormal(0.0, 0.5))
    age0 = float(rng.uniform(22, 52))
    duration0 = 0.2 if ms_type == "CIS" else float(rng.uniform(0.5, 12.0))
    if ms_type == "SP":
        duration0 += 10.0
    date0 = dt.date(2018, 1, 8) + dt.timedelta(days=int(rng.integers(0, 900)))
    birth_year = int(date0.year - age0)
    onset_year = max(birth_year + 12, int(date0.year - duration0))
    lo_r, hi_r = config.atrophy_pct_per_year
    atrophy = float(np.clip(0.55 + 0.30 * (activity - 1.0) + 0.30 * (ms_type == "SP")
                            - 0.12 * (arm == "treatment") + rng.normal(0, 0.12), lo_r, hi_r))
    subject_scale = tuple(float(s) for s in rng.uniform(0.86, 0.94, 3))

    # Baseline lesions.
    n0 = int(np.clip(round(activity * (5 + 1.5 * duration0)), 3, 35))
    if ms_type == "CIS":
        n0 = int(rng.integers(2, 5))
    lesions: list[LesionSpec] = []
    for _ in range(n0):
        les = _new_lesion(rng, sites, len(lesions) + 1, lesions)
        if les is not None:
            lesions.append(les)
    scale = {les.lesion_id: float(rng.uniform(0.9, 1.1)) for les in lesions}
    fresh: set[int] = set()

    # Visit schedule.
    n_vis = int(rng.integers(config.visits[0], config.visits[1] + 1))
    span = float(rng.uniform(*config.span_years))
    years = [0.0] + [span * j / (n_vis - 1) + rng.normal(0, 0.04) for j in range(1, n_vis)]
    years[-1] = span
    scanner_names = list(SCANNERS)
    scanner = scanner_names[index % 2 if index != 5 else 0]
    dmt = ARM_DMT[arm]
    edss = snap_edss({"SP": rng.uniform(4.0, 6.5), "CIS": rng.uniform(0.0, 1.5)}.get(
        ms_type, 1.0 + 0.12 * duration0 + rng.normal(0, 0.6)))
    table_offset = rng.normal(0, 10, 3) + np.array([0.0, 15.0, 40.0])
    visits: list[VisitPlan] = []
    for j, t in enumerate(years):
        relapses = 0
        status = {les.lesion_id: ("present" if j == 0 else "") for les in lesions}
        if j > 0:
            dt_years = t - years[j - 1]
            eff = DMT_EFFECT[dmt]
            base_rate = {"SP": 0.8, "CIS": 1.5}.get(ms_type, 2.5)
            n_new = int(rng.poisson(base_rate * activity * eff["lesions"] * dt_years))
            arr = {"SP": 0.2, "CIS": 0.5}.get(ms_type, 0.7) * math.sqrt(activity)
            relapses = int(rng.poisson(arr * eff["relapses"] * dt_years))
            prev = dict(scale)
            for lid in list(scale):
                s = scale[lid]
                if s <= 0:
                    continue
                u = rng.random()
                if lid in fresh:  # acute lesions shrink after the first months
                    s *= rng.uniform(0.72, 0.9)
                elif u < 0.06 * activity * eff["lesions"] ** 0.5 * dt_years:
                    s *= rng.uniform(1.16, 1.35)
                elif u < 0.15:
                    s *= rng.uniform(0.72, 0.86)
                elif u < 0.19 and lesion_volume_ml(lesions[lid - 1], s) < 0.12:
                    s = 0.0
                else:
                    s *= rng.uniform(0.985, 1.015)
                scale[lid] = s
            fresh = set()
            for _ in range(n_new):
                les = _new_lesion(rng, sites, len(lesions) + 1,
                                  [e for e in lesions if scale.get(e.lesion_id, 0) > 0])
                if les is None:
                    continue
                lesions.append(les)
                prev[les.lesion_id] = 0.0
                scale[les.lesion_id] = float(rng.uniform(0.9, 1.15))
                fresh.add(les.lesion_id)
            status = {lid: _visit_status(prev.get(lid, 0.0), s) for lid, s in scale.items()}
            new_count = sum(st in ("new", "enlarging") for st in status.values())
            # EDSS: hazard of a confirmed step, raised by relapses, new lesions and atrophy.
            hazard = (0.10 + 0.25 * (ms_type == "SP")) * math.exp(
                0.5 * relapses + 0.15 * new_count / max(dt_years, 0.25) + 0.8 * (atrophy - 0.5))
            steps = int(rng.poisson(hazard * dt_years))
            for _ in range(steps):
                edss = snap_edss(edss + (1.0 if edss < 1.0 else 0.5))
            if steps == 0 and relapses == 0 and edss >= 1.0 and rng.random() < 0.1:
                edss = snap_edss(edss - 0.5)
            edss = min(edss, 9.5)
            if index == 5 and j == n_vis // 2:
                scanner = scanner_names[1]  # the scanner-change patient
            # Escalation: active control-arm patients switch to a high-efficacy DMT at this visit.
            if arm == "control" and dmt == ARM_DMT["control"] and (
                    relapses >= 1 or sum(st == "new" for st in status.values()) >= 3):
                dmt = "natalizumab"
        pose = _rigid(rng, 3.0, 4.0, table_offset)
        visits.append(VisitPlan(
            session_id=f"ses-{j + 1:02d}",
            acq_date=date0 + dt.timedelta(days=round(t * DAYS_PER_YEAR)),
            years=float(t), edss=edss, relapses_since_last=relapses, dmt=dmt, scanner=scanner,
            pose=pose.tolist(), t1_motion=_rigid(rng, 0.5, 0.7).tolist(),
            orientation={m: str(rng.choice(SCANNERS[scanner][m].orientations))  # type: ignore
                         for m in ("FLAIR", "T1w")},
            fov_shift_mm=rng.normal(0, 4, 3).tolist(),
            lesion_scale=dict(scale), status=status,
        ))
    return PatientPlan(index, pid, sex, birth_year, ms_type, onset_year, arm, activity, atrophy,
                       subject_scale, tuple(lesions), tuple(visits))  # type: ignore[arg-type]


def plan_study(config: DemoConfig) -> list[PatientPlan]:
    """Draw every patient's clinical course, lesions and acquisitions (no images)."""
    sites = _Sites(load_template())
    return [_plan_patient(config, i, sites) for i in range(config.n_patients)]


# ============================================================================== rendering
@dataclass(frozen=True, eq=False)
class _Acquired:
    data: np.ndarray            # (X, Y, Z) float32 signal
    affine: np.ndarray
    lesion_pv: dict[int, tuple[tuple[slice, ...], np.ndarray]]  # per lesion: box, pv
    parenchyma: np.ndarray      # (X, Y, Z) float32 GM + WM fraction


def _sample(volume: np.ndarray, m: np.ndarray, shape: tuple[int, int, int],
            cval: float = 0.0) -> np.ndarray:
    out = ndi.affine_transform(volume, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=1,
                               mode="constant", cval=cval, prefilter=False)
    return np.asarray(out, dtype=np.float32)


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int],
                strength: float) -> np.ndarray:
    u = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    ux, uy, uz = u[0][:, None, None], u[1][None, :, None], u[2][None, None, :]
    c = rng.normal(0, strength, 9).astype(np.float32)
    log_b = (c[0] * ux + c[1] * uy + c[2] * uz + c[3] * ux * ux + c[4] * uy * uy + c[5] * uz * uz
             + c[6] * ux * uy + c[7] * uy * uz + c[8] * ux * uz)
    return np.asarray(np.exp(log_b), dtype=np.float32)


def _acquire(tpl: Template, plan: PatientPlan, visit: VisitPlan, modality: str,
             rng: np.random.Generator, centroid_mm: np.ndarray) -> _Acquired:
    seq: Sequence = SCANNERS[visit.scanner][modality]  # type: ignore[assignment]
    shape = tuple(round(f / s) for f, s in zip(seq.fov_mm, seq.spacing_mm, strict=True))
    subj = _scaling_about(np.zeros(3), np.asarray(plan.subject_scale))
    pose = np.asarray(visit.pose) @ subj
    if modality == "T1w":
        pose = np.asarray(visit.t1_motion) @ pose
    head_center_anat = np.array([0.0, -18.0, 8.0, 1.0])
    center = (pose @ head_center_anat)[:3] + np.asarray(visit.fov_shift_mm)
    affine = _acquisition_affine(visit.orientation[modality], seq.spacing_mm,
                                 shape, center)  # type: ignore[arg-type]
    n_sub = 3 if seq.two_d else 1
    fine = affine.copy()
    fine[:3, 2] /= n_sub
    fine[:3, 3] -= affine[:3, 2] * (n_sub - 1) / (2 * n_sub)
    fshape = (shape[0], shape[1], shape[2] * n_sub)

    k = (1.0 - plan.atrophy_pct_per_year / 100.0) ** (visit.years / 3.0)
    t_inv = np.linalg.inv(tpl.affine)
    to_anat = np.linalg.inv(pose) @ fine
    m_head = t_inv @ to_anat
    par_mm = np.linalg.inv(_scaling_about(centroid_mm, k)) @ to_anat
    m_par = t_inv @ par_mm

    sd = _sample(tpl.head_sd_mm, m_head, fshape, cval=100.0)
    gm = _sample(tpl.gm, m_par, fshape)
    wm = _sample(tpl.wm, m_par, fshape)
    c = seq.contrast
    signal = tissue_signal(gm, wm, sd, c)

    # Lesions, evaluated on the fine grid in template-parenchyma millimetres.
    fine_to_mm = par_mm
    mm_to_fine = np.linalg.inv(fine_to_mm)
    lesion_max = np.zeros(fshape, dtype=np.float32)  # FLAIR: lesion fraction of the signal
    lesion_level = np.zeros(fshape, dtype=np.float32)  # FLAIR: that lesion's core signal
    per_lesion: dict[int, tuple[tuple[slice, ...], np.ndarray]] = {}
    for les in plan.lesions:
        s = visit.lesion_scale.get(les.lesion_id, 0.0)
        if s <= 0:
            continue
        lo, hi = les.bbox_mm(s)
        corners = np.array([[a, b, cc, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for cc in (lo[2], hi[2])])
        idx = (mm_to_fine @ corners.T)[:3]
        start = np.maximum(np.floor(idx.min(axis=1)).astype(int), 0)
        stop = np.minimum(np.ceil(idx.max(axis=1)).astype(int) + 1, fshape)
        start[2] -= start[2] % n_sub
        stop[2] = min(fshape[2], stop[2] + (-stop[2]) % n_sub)
        if np.any(stop <= start):
            continue
        box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
        grid = np.indices(tuple(stop - start), dtype=np.float32).reshape(3, -1)
        grid += start[:, None]
        pts = (fine_to_mm[:3, :3] @ grid + fine_to_mm[:3, 3:4]).T
        depth = lesion_depth_mm(pts, les, s).reshape(tuple(stop - start))
        parenchyma_box = np.clip(gm[box] + wm[box], 0, 1)  # lesions live in parenchyma
        pv = edge_ramp(depth, LABEL_EDGE_MM) * parenchyma_box
        if modality != "T1w":  # graded FLAIR edge; the brightest lesion wins where two meet
            fade = edge_ramp(depth, FLAIR_EDGE_MM) * parenchyma_box
            level = flair_lesion_signal(les, c)
            win = fade * level > lesion_max[box] * lesion_level[box]
            lesion_max[box][win] = fade[win]
            lesion_level[box][win] = level
        coarse_box = (box[0], box[1], slice(box[2].start // n_sub, box[2].stop // n_sub))
        coarse_pv = pv.reshape(pv.shape[0], pv.shape[1], -1, n_sub).mean(axis=3)
        per_lesion[les.lesion_id] = (coarse_box, coarse_pv)
        if modality == "T1w":
            dark = c["lesion"] * (1.0 - 0.5 * les.t1_darkness)
            signal[box] += pv * (dark - signal[box])
    if modality != "T1w":
        signal += lesion_max * (lesion_level - signal)

    parenchyma = gm + wm
    head = (sd < 14.0).astype(np.float32)
    if n_sub > 1:
        signal = signal.reshape(shape[0], shape[1], shape[2], n_sub).mean(axis=3)
        parenchyma = parenchyma.reshape(shape[0], shape[1], shape[2], n_sub).mean(axis=3)
        head = head.reshape(shape[0], shape[1], shape[2], n_sub).max(axis=3)
    signal *= _bias_field(rng, shape, 0.08)  # type: ignore[arg-type]
    sigma = np.float32(seq.noise)
    n1 = rng.standard_normal(shape, dtype=np.float32)
    n2 = rng.standard_normal(shape, dtype=np.float32)
    signal = np.sqrt((signal + sigma * n1) ** 2 + (sigma * n2) ** 2)
    signal *= head  # air outside the head is zero, as in the masked open_ms_data raw scans
    return _Acquired(signal, affine, per_lesion, parenchyma)


def _lesion_labels(acq: _Acquired) -> np.ndarray:
    """Label of the lesion with the largest partial volume where that volume is >= 0.5."""
    shape = acq.data.shape
    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, 0.5, dtype=np.float32)
    for lid, (box, pv) in sorted(acq.lesion_pv.items()):
        win = pv >= best[box]
        labels[box][win] = lid
        best[box][win] = pv[win]
    return labels


def render_patient(plan: PatientPlan, root: Path, seed: int) -> dict[str, object]:
    """Write the images and ground truth of one patient under ``root``; return timing info."""
    t0 = time.perf_counter()
    tpl = load_template()
    centroid = (tpl.affine @ np.append(np.argwhere(tpl.brain > 0.5).mean(axis=0), 1.0))[:3]
    vol_scale = float(np.prod(plan.subject_scale))
    gm_ml, wm_ml = float(tpl.gm.sum()) / 1000.0, float(tpl.wm.sum()) / 1000.0
    icv_ml = float(tpl.brain.sum()) / 1000.0 * vol_scale
    base_volume: dict[int, float] = {}
    prev_volume: dict[int, float] = {}
    for j, visit in enumerate(plan.visits):
        rng = np.random.default_rng([seed, plan.index, j, 7])
        f = (1.0 - plan.atrophy_pct_per_year / 100.0) ** visit.years
        flair = _acquire(tpl, plan, visit, "FLAIR", rng, centroid)
        t1 = _acquire(tpl, plan, visit, "T1w", rng, centroid)
        for modality, acq in (("FLAIR", flair), ("T1w", t1)):
            gain = 400.0 if "Siemens" in visit.scanner else 560.0  # arbitrary scanner units
            data = np.clip(np.rint(acq.data * gain), 0, 32767).astype(np.int16)
            save_volume(image_path(root, plan.participant_id, visit.session_id, modality),
                        data, acq.affine, np.int16)
        labels = _lesion_labels(flair)
        out = truth_dir(root, plan.participant_id, visit.session_id)
        save_labels(out / "lesion_labels.nii.gz", labels, flair.affine)
        save_labels(out / "brain_mask.nii.gz", (flair.parenchyma >= 0.5).astype(np.uint8),
                    flair.affine)
        lesions = []
        voxel_ml = abs(np.linalg.det(flair.affine[:3, :3])) / 1000.0
        pose = np.asarray(visit.pose) @ _scaling_about(np.zeros(3), np.asarray(plan.subject_scale))
        k = f ** (1.0 / 3.0)
        for les in plan.lesions:
            s = visit.lesion_scale.get(les.lesion_id, 0.0)
            status = visit.status.get(les.lesion_id, "absent")
            if s <= 0 and status != "disappeared":
                continue
            vol = lesion_volume_ml(les, s, tpl) * f * vol_scale
            anat = centroid + (les.center_mm - centroid) * k
            lesions.append({
                "lesion_id": les.lesion_id, "location": les.location, "status": status,
                "volume_ml": round(vol, 5),
                "volume_baseline_ml": round(base_volume.get(les.lesion_id, 0.0), 5),
                "volume_previous_ml": round(prev_volume.get(les.lesion_id, 0.0), 5),
                "mask_volume_ml": round(float((labels == les.lesion_id).sum()) * voxel_ml, 5),
                "centroid_mm": np.round((pose @ np.append(anat, 1.0))[:3], 2).tolist(),
            })
            base_volume.setdefault(les.lesion_id, vol if j == 0 else 0.0)
            prev_volume[les.lesion_id] = vol
        write_json(out / "truth.json", {
            "participant_id": plan.participant_id, "session_id": visit.session_id,
            "years_from_baseline": round(visit.years, 4),
            "atrophy_pct_per_year": plan.atrophy_pct_per_year,
            "brain_volume_ml": round((gm_ml + wm_ml) * vol_scale * f, 3),
            "gm_volume_ml": round(gm_ml * vol_scale * f, 3),
            "wm_volume_ml": round(wm_ml * vol_scale * f, 3),
            "icv_ml": round(icv_ml, 3),
            "bpf": round((gm_ml + wm_ml) * vol_scale * f / icv_ml, 5),
            "brain_mask_volume_ml": round(float((flair.parenchyma >= 0.5).sum()) * voxel_ml, 3),
            "lesion_volume_ml": round(sum(float(les["volume_ml"]) for les in lesions
                                          if les["status"] != "disappeared"), 5),
            "lesion_count": sum(les["status"] != "disappeared" for les in lesions),
            "new_or_enlarging": sum(les["status"] in ("new", "enlarging") for les in lesions),
            "lesions": lesions,
            "grid": "FLAIR", "anat_to_scanner": pose.tolist(),
        })
    return {"participant_id": plan.participant_id, "seconds": round(time.perf_counter() - t0, 2)}


def _render_job(args: tuple[PatientPlan, Path, int]) -> dict[str, object]:
    return render_patient(*args)


# ============================================================================== tables and entry
def _tables(plans: list[PatientPlan]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    participants = pd.DataFrame([{
        "participant_id": p.participant_id, "sex": p.sex, "birth_year": p.birth_year,
        "ms_type": p.ms_type, "onset_year": p.onset_year, "trial_arm": p.trial_arm,
    } for p in plans])
    sessions = {p.participant_id: pd.DataFrame([{
        "session_id": v.session_id, "acq_date": v.acq_date.isoformat(), "edss": v.edss,
        "relapses_since_last": v.relapses_since_last, "dmt": v.dmt, "scanner": v.scanner,
        "field_strength_t": SCANNERS[v.scanner]["field_strength_t"],
    } for v in p.visits]) for p in plans}
    return participants, sessions


def _plan_record(p: PatientPlan) -> dict[str, object]:
    return {
        "participant_id": p.participant_id, "trial_arm": p.trial_arm, "ms_type": p.ms_type,
        "activity": round(p.activity, 4), "atrophy_pct_per_year": p.atrophy_pct_per_year,
        "subject_scale": p.subject_scale, "n_lesions_ever": len(p.lesions),
        "scanners": sorted({v.scanner for v in p.visits}),
    }


def build_demo(out: Path | str, config: DemoConfig = DemoConfig()) -> Path:
    """Build the demo study into ``out`` (replaced atomically if it exists); return ``out``.

    The study is written to a temporary sibling folder and renamed into place at the end, so an
    interrupted build never leaves a half-written study at ``out``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plans = plan_study(config)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        participants, sessions = _tables(plans)
        write_tsv(tmp / "participants.tsv", participants)
        for pid, table in sessions.items():
            write_tsv(tmp / pid / f"{pid}_sessions.tsv", table)
        write_json(tmp / "dataset_description.json", {
            "Name": "ms_dash synthetic demo trial", "BIDSVersion": "1.9.0",
            "DatasetType": "raw", "GeneratedBy": [{"Name": DEMO_GENERATOR, "Version": __version__}],
            "License": "CC0 (synthetic; anatomy from the MNI ICBM152 2009a template via nilearn)",
        })
        jobs = [(p, tmp, config.seed) for p in plans]
        if config.workers > 1:
            with ProcessPoolExecutor(max_workers=config.workers) as pool:
                timings = list(pool.map(_render_job, jobs))
        else:
            timings = [_render_job(j) for j in jobs]
        write_json(pipeline_dir(tmp, TRUTH) / "generator.json", {
            "config": asdict(config), "version": __version__,
            "patients": [_plan_record(p) for p in plans],
            "dmt_effect": DMT_EFFECT, "scanners": {
                name: {m: asdict(s) if isinstance(s, Sequence) else s for m, s in spec.items()}
                for name, spec in SCANNERS.items()},
            "enlarging_ratio": ENLARGING_RATIO, "render_seconds": timings,
        })
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("demo study with %d patients built in %.1f s at %s", len(plans),
             time.perf_counter() - t0, out)
    return out
