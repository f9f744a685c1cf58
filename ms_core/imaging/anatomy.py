"""The MNI152 (ICBM 2009a symmetric) template shipped inside nilearn, and zones derived from it.

Used by the demo generator and, later, for lesion-location atlases. Nothing is downloaded: nilearn
bundles the 1 mm T1 template, GM and WM probability maps and the brain mask in its wheel.

Coordinates: the template affine maps (x, y, z) voxel indices to RAS+ MNI millimetres.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import logging
import sys
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ms_core.foundation.domain import affine_spacing
from ms_core.foundation.io import cached_arrays

__all__ = [
    "TYPICAL_CONTRAST",
    "Template",
    "derivation_key",
    "load_template",
    "synthetic_head",
    "tissue_signal",
    "world_grid",
]

#: Relative signal of each tissue in typical clinical sequences (1.5-3 T), used to synthesise
#: template images for registration. Lesion signal is relative to the same scale.
TYPICAL_CONTRAST: dict[str, dict[str, float]] = {
    "FLAIR": {"gm": 0.64, "wm": 0.47, "csf": 0.06, "lesion": 1.0, "skull": 0.05, "scalp": 0.5},
    "T1w": {"gm": 0.48, "wm": 0.81, "csf": 0.11, "lesion": 0.5, "skull": 0.07, "scalp": 0.9},
}

log = logging.getLogger(__name__)

#: Box (MNI mm) that holds the lateral ventricles; CSF components inside it form the ventricle mask.
_VENTRICLE_BOX_MM = {"x": (-30.0, 30.0), "y": (-50.0, 35.0), "z": (-5.0, 35.0)}
#: Smallest connected CSF component (voxels of 1 mm^3) counted as a lateral ventricle.
_MIN_VENTRICLE_VOXELS = 2000


@dataclass(frozen=True, eq=False)
class Template:
    """Tissue maps on the 1 mm MNI grid, all (197, 233, 189) float32 in [0, 1].

    ``head_sd_mm`` is the signed distance to the brain surface in mm (negative inside the brain
    mask), used to synthesise extra-cerebral tissue. Distances ``*_dist_mm`` are to the nearest
    voxel of the named structure.
    """

    affine: np.ndarray
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    head_sd_mm: np.ndarray
    ventricle_dist_mm: np.ndarray
    cortex_dist_mm: np.ndarray

    @property
    def csf(self) -> np.ndarray:
        """CSF fraction: brain mask minus GM and WM, (X, Y, Z) float32."""
        return np.asarray(np.clip(self.brain - self.gm - self.wm, 0.0, 1.0), dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.gm.shape
        return (int(s[0]), int(s[1]), int(s[2]))


def world_grid(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World (mm) coordinates of every voxel centre: (3, X, Y, Z) float32."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    return xyz.reshape((3, *shape))


#: The arrays of a :class:`Template`, as stored in the derived-map cache.
_TEMPLATE_ARRAYS = ("affine", "t1", "gm", "wm", "brain", "ventricles", "head_sd_mm",
                    "ventricle_dist_mm", "cortex_dist_mm")


def derivation_key(*modules: str) -> str | None:
    """Cache key of maps derived by the code of ``modules`` (names, e.g. ``__name__``).

    A hash of those modules' source and of the numpy, scipy and nilearn versions: editing the
    code or upgrading a library gives a new key, so stale maps are never read. None when the
    source cannot be read (then nothing is cached).
    """
    h = hashlib.sha256()
    try:
        for lib in ("numpy", "scipy", "nilearn"):
            h.update(f"{lib}={importlib.metadata.version(lib)}\n".encode())
        for name in modules:
            h.update(inspect.getsource(sys.modules[name]).encode())
    except (OSError, TypeError, KeyError, importlib.metadata.PackageNotFoundError) as e:
        log.info("no cache key for %s (%s)", modules, e)
        return None
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """The nilearn MNI152 maps with derived ventricles and distance maps.

    Deriving them takes about 10 s (nilearn's import and five distance transforms); they are
    kept in the cache folder (:func:`ms_core.foundation.io.cached_arrays`, ``MS_DASH_CACHE_DIR``),
    so later processes read them in well under a second.
    """
    arrays = cached_arrays("mni152_template", derivation_key(__name__), _TEMPLATE_ARRAYS,
                           _derive_template)
    arrays["ventricles"] = arrays["ventricles"].astype(np.float32)
    arrays["brain"] = arrays["brain"].astype(np.float32)
    return Template(**arrays)


def _derive_template() -> dict[str, np.ndarray]:
    """Load the nilearn maps and derive the rest (the slow path of :func:`load_template`)."""
    from nilearn import datasets  # imported here: nilearn is slow to import

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    gm = np.asarray(gm_img.get_fdata(dtype=np.float32))
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32))
    t1 = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(dtype=np.float32))
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32))
    if not np.isin(brain, (0.0, 1.0)).all():
        raise ValueError("nilearn's MNI152 brain mask is not binary")
    gm, wm = gm * brain, wm * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)

    x, y, z = world_grid(gm.shape, affine)
    box = np.ones(gm.shape, dtype=bool)
    for axis, (lo, hi) in zip((x, y, z), _VENTRICLE_BOX_MM.values(), strict=True):
        box &= (axis > lo) & (axis < hi)
    labels, n = ndi.label((csf > 0.5) & box)
    sizes = ndi.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= _MIN_VENTRICLE_VOXELS) + 1
    ventricles = np.isin(labels, keep)
    log.debug("ventricles: %d components, %d voxels", keep.size, int(ventricles.sum()))

    spacing = affine_spacing(affine)
    inside = brain > 0.5
    head_sd = (ndi.distance_transform_edt(~inside, sampling=spacing)
               - ndi.distance_transform_edt(inside, sampling=spacing)).astype(np.float32)
    vent_dist = ndi.distance_transform_edt(~ventricles, sampling=spacing).astype(np.float32)
    cortex_dist = ndi.distance_transform_edt(gm < 0.5, sampling=spacing).astype(np.float32)
    return {"affine": affine, "t1": t1, "gm": gm, "wm": wm, "brain": inside,
            "ventricles": ventricles, "head_sd_mm": head_sd, "ventricle_dist_mm": vent_dist,
            "cortex_dist_mm": cortex_dist}


def tissue_signal(gm: np.ndarray, wm: np.ndarray, head_sd_mm: np.ndarray,
                  contrast: dict[str, float]) -> np.ndarray:
    """Noise-free MR signal from tissue fractions, (X, Y, Z) float32.

    ``gm`` and ``wm`` are fractions; ``head_sd_mm`` is the signed distance to the brain surface
    (negative inside). Inside the intracranial volume the rest is CSF; outside lie CSF (0-2 mm),
    skull (2-7 mm) and scalp (7-13 mm), each with its ``contrast`` entry.
    """
    sd = head_sd_mm
    icv = np.clip(0.5 - sd, 0.0, 1.0)
    csf = np.clip(icv - gm - wm, 0.0, 1.0)
    out_csf = np.clip(sd + 0.5, 0, 1) - np.clip(sd - 1.5, 0, 1)
    skull = np.clip(sd - 1.5, 0, 1) - np.clip(sd - 6.5, 0, 1)
    scalp = np.clip(sd - 6.5, 0, 1) - np.clip(sd - 12.5, 0, 1)
    c = contrast
    signal = (gm * c["gm"] + wm * c["wm"] + (csf + out_csf) * c["csf"] + skull * c["skull"]
              + scalp * c["scalp"])
    return np.asarray(signal, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def synthetic_head(modality: str, with_skull: bool = True) -> np.ndarray:
    """The template as a ``modality`` ("FLAIR" or "T1w") image, with or without skull and scalp.

    (X, Y, Z) float32 on the template grid; a registration target for raw or skull-stripped
    scans. Raises ``ValueError`` for an unknown modality.
    """
    if modality not in TYPICAL_CONTRAST:
        known = list(TYPICAL_CONTRAST)
        raise ValueError(f"no typical contrast for {modality!r}; use one of {known}")
    tpl = load_template()
    sd = tpl.head_sd_mm if with_skull else np.where(tpl.head_sd_mm > 0.5, 100.0, tpl.head_sd_mm)
    return tissue_signal(tpl.gm, tpl.wm, sd.astype(np.float32), TYPICAL_CONTRAST[modality])
