"""Lesion location classes (McDonald 2017 / MAGNIMS topography) from MNI152 zones.

Every lesion gets one of :data:`LOCATIONS` (periventricular, juxtacortical/cortical,
infratentorial, deep white matter): its voxels are mapped to MNI mm, looked up in the template's
zones, and the first zone of :data:`PRIORITY` that holds at least :data:`MIN_ZONE_SHARE` of the
lesion wins.

Main entry points: :func:`classify_lesions`, :func:`mni_zones`, :func:`location_counts`. Zone
definitions, decision rule, accuracy and limits: ``docs/lesion_location.md``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy import ndimage as ndi

from ms_core.foundation.domain import LESION_LOCATIONS, affine_spacing, check_affine
from ms_core.foundation.io import cached_arrays
from ms_core.imaging.anatomy import derivation_key, load_template, world_grid
from ms_core.imaging.preprocess import Grid, warp_from_template
from ms_core.lesions.components import check_labels

__all__ = [
    "DEEP_GREY_BOX_MM",
    "DISPLAY_NAMES",
    "JUXTACORTICAL_MM",
    "LOCATIONS",
    "MIN_ZONE_SHARE",
    "PERIVENTRICULAR_MM",
    "PRIORITY",
    "ZONES",
    "MniZones",
    "classify_lesions",
    "classify_shares",
    "location_counts",
    "location_zones",
    "mni_zones",
    "zone_shares",
]

log = logging.getLogger(__name__)

#: Location classes, as in :data:`ms_core.synthetic.demo.LOCATIONS`.
LOCATIONS = LESION_LOCATIONS
#: Names shown to people.
DISPLAY_NAMES = {
    "periventricular": "periventricular",
    "juxtacortical": "juxtacortical/cortical",
    "infratentorial": "infratentorial",
    "deep_white_matter": "deep white matter",
}
#: Zones that have a mask (deep white matter is "none of them").
ZONES = ("periventricular", "juxtacortical", "infratentorial")
#: Order in which zones win when a lesion is in several.
PRIORITY = ("infratentorial", "periventricular", "juxtacortical")
#: Periventricular band: distance to the lateral ventricles, MNI mm.
PERIVENTRICULAR_MM = 3.0
#: Juxtacortical band: distance to cortical grey matter, MNI mm (the cortex itself included).
JUXTACORTICAL_MM = 2.0
#: Smallest share of a lesion's voxels inside a zone for the lesion to count as in that zone.
MIN_ZONE_SHARE = 0.05
#: Box (MNI mm, both hemispheres by |x|) holding thalamus, caudate, putamen and pallidum.
DEEP_GREY_BOX_MM = {"abs_x": (0.0, 32.0), "y": (-38.0, 26.0), "z": (-12.0, 24.0)}
#: Inside the deep-grey box, |x| below this and y above 0 is septal / subcallosal cortex.
_SEPTAL_ABS_X_MM = 6.0
#: GM-map voxels closer than this to the lateral ventricles are partial volume, not cortex (mm).
_CORTEX_MIN_VENTRICLE_MM = 5.0


@dataclass(frozen=True, eq=False)
class MniZones:
    """Zone masks on the 1 mm MNI152 grid: each (197, 233, 189) bool, read-only.

    ``masks`` has one entry per name in :data:`ZONES`; ``deep_grey`` (thalamus and basal
    ganglia) and ``cortex`` (cerebral cortical grey matter) are the intermediate masks, kept for
    display and tests. ``affine`` maps template voxels to MNI mm.
    """

    affine: np.ndarray
    masks: Mapping[str, np.ndarray]
    deep_grey: np.ndarray
    cortex: np.ndarray


def _readonly(mask: np.ndarray) -> np.ndarray:
    out = np.asarray(mask, dtype=bool)
    out.setflags(write=False)
    return out


def _infratentorial(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Below-the-tentorium region from MNI coordinates (see the module docstring); bool."""
    ax = np.abs(x)
    tent = -3.0 - 0.45 * ax + 0.25 * np.minimum(y + 60.0, 0.0)
    cerebellum = (z < tent) & (y < -38.0)
    brainstem = (ax <= 14.0) & (y >= -45.0) & (y <= -8.0) & (z <= -2.0) & (
        z < -2.0 - 0.7 * (y + 27.0))
    return np.asarray(cerebellum | brainstem)


@functools.lru_cache(maxsize=1)
def mni_zones() -> MniZones:
    """The zone masks on the MNI grid (derived in about 3 s, then read from the cache folder
    of :func:`ms_core.foundation.io.cached_arrays`)."""
    names = (*ZONES, "deep_grey", "cortex")
    key = derivation_key(__name__, "ms_core.imaging.anatomy")
    zones = cached_arrays("mni_zones", key, names, _derive_zones)
    return MniZones(affine=load_template().affine.copy(),
                    masks=MappingProxyType({z: _readonly(zones[z]) for z in ZONES}),
                    deep_grey=_readonly(zones["deep_grey"]), cortex=_readonly(zones["cortex"]))


def _derive_zones() -> dict[str, np.ndarray]:
    """The masks of :func:`mni_zones` from the template (its slow path), each bool."""
    tpl = load_template()
    x, y, z = world_grid(tpl.shape, tpl.affine)
    brain = tpl.brain >= 0.5
    spacing = affine_spacing(tpl.affine)

    infra = _infratentorial(x, y, z) & brain
    box = DEEP_GREY_BOX_MM
    ax = np.abs(x)
    in_box = ((ax >= box["abs_x"][0]) & (ax <= box["abs_x"][1]) & (y >= box["y"][0])
              & (y <= box["y"][1]) & (z >= box["z"][0]) & (z <= box["z"][1])
              & ~((ax < _SEPTAL_ABS_X_MM) & (y > 0.0)))
    grey = tpl.gm >= 0.5
    deep_grey = grey & in_box
    # The probabilistic GM map also rims the ventricles (CSF/WM partial volume): no cortex there.
    cortex = grey & ~deep_grey & ~infra & (tpl.ventricle_dist_mm > _CORTEX_MIN_VENTRICLE_MM)

    cortex_dist = ndi.distance_transform_edt(~cortex, sampling=spacing)
    juxta = (cortex_dist <= JUXTACORTICAL_MM) & brain & ~infra
    peri = (tpl.ventricle_dist_mm <= PERIVENTRICULAR_MM) & ~deep_grey & ~infra
    log.debug("MNI zones: infra %d, peri %d, juxta %d voxels", int(infra.sum()),
              int(peri.sum()), int(juxta.sum()))
    return {"periventricular": np.asarray(peri), "juxtacortical": np.asarray(juxta),
            "infratentorial": np.asarray(infra), "deep_grey": np.asarray(deep_grey),
            "cortex": np.asarray(cortex)}


def location_zones(grid: Grid, subject_to_mni: np.ndarray) -> dict[str, np.ndarray]:
    """The zone masks resampled onto a subject ``grid``.

    Parameters
    ----------
    grid
        Target grid, e.g. ``Grid(flair.shape, flair.affine)``.
    subject_to_mni
        (4, 4) RAS+ matrix mapping subject world mm to MNI mm
        (:func:`ms_core.imaging.preprocess.template_to_subject`).

    Returns
    -------
    dict
        One (X, Y, Z) bool mask per name in :data:`ZONES` (linear interpolation of the 0/1 mask,
        then >= 0.5).
    """
    s2m = check_affine(subject_to_mni, name="subject_to_mni")
    zones = mni_zones()
    return {name: warp_from_template(mask.astype(np.float32), s2m, grid) >= 0.5
            for name, mask in zones.masks.items()}


def zone_shares(labels: np.ndarray, affine: np.ndarray,
                subject_to_mni: np.ndarray) -> dict[int, dict[str, float]]:
    """Fraction of each lesion's voxels inside each zone.

    Parameters
    ----------
    labels
        (X, Y, Z) int lesion ids (0 = background) on the grid ``affine``.
    affine
        (4, 4) voxel -> subject RAS+ mm.
    subject_to_mni
        (4, 4) subject mm -> MNI mm.

    Returns
    -------
    dict
        ``lesion_id -> {zone: share in [0, 1]}`` for every id present, zones as in :data:`ZONES`.
        Voxels mapping outside the template count as in no zone.

    >>> lab = np.zeros((3, 3, 3), np.int32); lab[1, 1, 1] = 4
    >>> zone_shares(lab, np.eye(4), np.eye(4))[4]["infratentorial"]
    0.0
    """
    arr = check_labels(labels)
    aff = check_affine(affine)
    s2m = check_affine(subject_to_mni, name="subject_to_mni")
    ijk = np.nonzero(arr)
    ids = arr[ijk].astype(np.int64)
    if ids.size == 0:
        return {}
    zones = mni_zones()
    to_tpl = np.linalg.inv(zones.affine) @ s2m @ aff
    pts = np.stack(ijk).astype(np.float64)
    tpl_idx = np.rint(to_tpl[:3, :3] @ pts + to_tpl[:3, 3:4]).astype(np.int64)
    shape = np.asarray(next(iter(zones.masks.values())).shape)[:, None]
    inside = np.all((tpl_idx >= 0) & (tpl_idx < shape), axis=0)
    safe = np.where(inside, tpl_idx, 0)
    uniq, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse, minlength=uniq.size).astype(np.float64)
    out: dict[int, dict[str, float]] = {int(u): {} for u in uniq}
    for name in ZONES:
        hit = zones.masks[name][safe[0], safe[1], safe[2]] & inside
        n_in = np.bincount(inverse, weights=hit.astype(np.float64), minlength=uniq.size)
        for u, share in zip(uniq, n_in / counts, strict=True):
            out[int(u)][name] = float(share)
    return out


def classify_shares(shares: Mapping[str, float], *, min_share: float = MIN_ZONE_SHARE) -> str:
    """Location class of one lesion from its zone shares (rule in the module docstring).

    >>> classify_shares({"periventricular": 0.3, "juxtacortical": 0.5, "infratentorial": 0.0})
    'periventricular'
    >>> classify_shares({"periventricular": 0.02, "juxtacortical": 0.0, "infratentorial": 0.0})
    'deep_white_matter'
    """
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share must be in (0, 1], got {min_share}")
    for zone in PRIORITY:
        if shares.get(zone, 0.0) >= min_share:
            return zone
    return "deep_white_matter"


def classify_lesions(labels: np.ndarray, affine: np.ndarray,
                     subject_to_mni: np.ndarray) -> dict[int, str]:
    """Location class of every lesion in ``labels``.

    Parameters
    ----------
    labels
        (X, Y, Z) int lesion ids (0 = background) on the grid ``affine``.
    affine
        (4, 4) voxel -> subject RAS+ mm of ``labels``.
    subject_to_mni
        (4, 4) subject mm -> MNI mm, from :func:`ms_core.imaging.preprocess.template_to_subject`.

    Returns
    -------
    dict
        ``lesion_id -> location`` (one of :data:`LOCATIONS`), sorted by id; empty for an empty
        mask.

    Raises
    ------
    ValueError
        for labels that are not 3D or negative, or a matrix that is not an invertible (4, 4).
    TypeError
        for float labels.
    """
    shares = zone_shares(labels, affine, subject_to_mni)
    return {lid: classify_shares(s) for lid, s in sorted(shares.items())}


def location_counts(locations: Mapping[int, str]) -> dict[str, int]:
    """Number of lesions per class, every class of :data:`LOCATIONS` present (0 if none).

    >>> location_counts({1: "infratentorial", 2: "infratentorial"})["infratentorial"]
    2
    """
    counts = dict.fromkeys(LOCATIONS, 0)
    for lid, loc in locations.items():
        if loc not in counts:
            raise ValueError(f"lesion {lid} has unknown location {loc!r}; use one of {LOCATIONS}")
        counts[loc] += 1
    return counts
