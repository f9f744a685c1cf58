"""On-the-fly synthetic training patches: MNI152 tissue maps with real MS lesion masks pasted in.

Each sample draws a real consensus lesion mask (open_ms_data, Lesjak et al. 2018,
Neuroinformatics 16:51-63, CC-BY; all patients except the validation patient26), a random
spatial transform (rotation, anisotropic scale, elastic warp, left-right flip) applied to both the
template tissue maps and the mask, then random contrasts and artefacts (domain randomisation):

- per-tissue FLAIR and T1 intensities (GM, WM, CSF, lesion) drawn from wide ranges, lesion
  texture, partial volume from trilinear sampling. With ``lesion_model="uniform"`` (models up to
  3.1.0) every lesion of a patch has the same FLAIR contrast; ``"varied"`` draws a contrast per
  lesion, skewed towards faint ones, and makes each lesion fainter at its border than in its
  core, as on real scans (open_ms_data patient26: border voxels 1.34, core 1.47 times white
  matter); ``"mixed"`` draws one of the two per patch, with equal odds;
- with ``winsorise``: the share of FLAIR patches clipped at 1.3-2.0 times white matter, as
  pipelines that winsorise intensities leave them (open_ms_data's FLAIR is capped near 1.6);
- smooth bias field, Rician noise (``noise="white"``: independent per voxel, as up to model
  3.0.0; ``noise="mixed"``: 2-20 % of the white-matter intensity, often spatially correlated as
  after k-space apodisation and resampling onto the 1 mm grid, plus fine tissue texture such as
  vessels and perivascular spaces), isotropic blur and thick-slice blur along a random axis
  (slice thickness 1-5 mm), gamma;
- with ``contrast_power`` p (default 1, uniform): the patch's lesion contrast is drawn as
  ``lo + (hi - lo) * u**p``, so p > 1 makes faint lesions common while keeping bright ones (p = 2
  on 1.15-2.6: 72 % below 1.9);
- with ``lesion_gm_floor`` (> 0): no FLAIR lesion fainter than that multiple of the patch's grey
  matter, as on real FLAIR, where lesions are brighter than cortex (open_ms_data patient26: grey
  matter 1.14, lesions 1.2-1.6 times white matter). Without it, a faint lesion range and a bright
  grey matter draw lesions darker than cortex, and the network learns to call bright cortex
  lesion;
- with ``lesionwise_fraction`` (> 0): that share of the lesion-centred patches is centred on a
  lesion drawn uniformly among the mask's connected lesions, not on a lesion voxel drawn
  uniformly, which centres large lesions in proportion to their volume. Most lesions are
  small, so small lesions are centred far more often;
- with ``caps="horns"``: the periventricular cap hard negatives lie only within 15 mm of the front
  and back of the lateral ventricles, where caps (ependymitis granularis) are a normal finding,
  instead of lining the whole ventricle ("ring", the default), which also covers small lesions
  on the ventricle wall;
- across-scanner options (models from 4.0.0; issue 32): ``gm_contrast``, the range of the grey
  / white matter FLAIR ratio (up to 1.6: MSLesSeg P18's cortex is 1.2 times white matter at
  its median and 1.47 at its 90th percentile) and ``gm_field``, a smooth regional variation of
  grey matter brightness (insula, claustrum, deep grey matter); ``healthy_fraction``, patches
  with no lesion at all, so bright cortex, septum and posterior fossa are learned as
  negatives; ``confluent_fraction``, patches whose mask is the union of two patients' masks
  grown by 1-3 voxels into white matter (large confluent periventricular lesions, up to about
  80 ml); ``small_fraction``, patches with 1-15 extra small lesions of 3-30 mm³ in white
  matter; ``ghosting``, a faint shifted copy of the image along one axis;
  ``fossa_gain``, the range of a FLAIR brightness factor of the posterior fossa (cerebellum and
  brainstem) against the cerebrum, which the tissue maps alone do not vary: on MSLesSeg's FLAIR
  the posterior fossa's grey matter is 1.14-1.17 times the cerebrum's (P39 and P18), on
  open_ms_data patient26's 1.01; its white matter 0.88-1.14 times the cerebrum's
  (``python bench/normalisation_check.py``); ``focus_balanced``, the focused
  lesion patches pick the zone first (juxtacortical or infratentorial, with equal odds where
  the mask has both), then a voxel of it, so infratentorial lesions (3 % of the bank's lesion
  voxels, 12 % of its juxtacortical ones) are centred as often as juxtacortical ones;
  ``normalisation="wm"``: each channel divided by its white-matter intensity (times a 3 %
  estimation error), as :func:`ms_core.imaging.preprocess.white_matter_level` normalises at
  inference, instead of the brain median, which moves with lesion load and grey matter contrast;
- skull-stripped input (outside the brain mask = 0), as the inference pipeline provides;
- with ``hard_negatives``: lesion-like structures that are *not* lesions (label 0), seen as false
  positives on real scans: a patchy bright rim at the brain-mask edge (left by brain extraction),
  small bright dots in grey matter and CSF (vessels, perivascular spaces), and thin bright
  periventricular caps.

With ``normalisation="median"`` images are normalised like
:func:`ms_core.imaging.preprocess.normalize_intensity` (divided by the median inside the brain),
using the same tissue intensities on a coarse whole-brain rendering.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ms_core.imaging.anatomy import Template, load_template, world_grid

__all__ = ["CAP_MODELS", "DEFAULT_GM_CONTRAST", "DEFAULT_LESION_CONTRAST", "LESION_MODELS",
           "NOISE_MODELS", "NORMALISATIONS",
           "VALIDATION_PATIENTS", "LesionBank", "PatchSampler", "correlated_noise",
           "load_lesion_bank"]

#: Real patients never used for training.
VALIDATION_PATIENTS = ("patient26",)
#: FLAIR lesion / white-matter intensity ratio range of the synthetic lesions (models up to v2).
DEFAULT_LESION_CONTRAST = (1.25, 2.6)
#: FLAIR grey / white matter intensity ratio range (models up to 3.2.0).
DEFAULT_GM_CONTRAST = (1.02, 1.45)
#: Intensity normalisations of :class:`PatchSampler`: by the brain median (models up to 3.2.0)
#: or by the white-matter intensity.
NORMALISATIONS = ("median", "wm")
#: Image noise models of :class:`PatchSampler` (see the module docstring).
NOISE_MODELS = ("white", "mixed")
#: FLAIR lesion appearance models of :class:`PatchSampler` (see the module docstring).
LESION_MODELS = ("uniform", "varied", "mixed")
#: Location zones (ms_core.lesions.location) whose lesions ``focus_fraction`` over-samples: where
#: the network misses most (v3.2.0 on the selection set: 12/21 juxtacortical, 3/6 infratentorial).
FOCUS_ZONES = ("juxtacortical", "infratentorial")
#: Periventricular cap hard negatives of :class:`PatchSampler`: "ring" (a lining around the
#: whole lateral ventricles, models up to 3.2.0) or "horns" (only at their front and back).
CAP_MODELS = ("ring", "horns")
#: With caps="horns": how far (mm, MNI y) from the front or back of the lateral ventricles.
HORN_MM = 15.0
MASK_NAME = "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"


@dataclasses.dataclass(frozen=True, eq=False)
class LesionBank:
    """Real lesion masks resampled onto the template grid: (N, X, Y, Z) uint8."""

    masks: np.ndarray
    names: tuple[str, ...]
    lesion_voxels: tuple[np.ndarray, ...]


def load_lesion_bank(mni_dir: Path, tpl: Template,
                     exclude: tuple[str, ...] = VALIDATION_PATIENTS) -> LesionBank:
    """Load every ``patientNN`` consensus mask under ``mni_dir`` except ``exclude``."""
    masks, names, voxels = [], [], []
    for folder in sorted(Path(mni_dir).glob("patient*")):
        if folder.name in exclude or not (folder / MASK_NAME).exists():
            continue
        img = nib.load(folder / MASK_NAME)
        src = np.asarray(img.dataobj).astype(np.float32)
        m = np.linalg.inv(img.affine) @ tpl.affine  # template voxel -> mask voxel
        out = ndi.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=tpl.shape,
                                   order=0, mode="constant", cval=0.0)
        mask = (out > 0.5).astype(np.uint8)
        masks.append(mask)
        names.append(folder.name)
        voxels.append(np.argwhere(mask > 0).astype(np.int16))
    if not masks:
        raise FileNotFoundError(f"no lesion masks named {MASK_NAME} under {mni_dir}")
    return LesionBank(np.stack(masks), tuple(names), tuple(voxels))


def _check_share(name: str, value: float, of: str) -> None:
    """Refuse a share (0-1) of ``of`` that lies outside 0-1, naming the option."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a share of {of}, 0-1, got {value}")


def _group_by_lesion(mask: np.ndarray, voxels: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``voxels`` (the lesion voxels of ``mask``) sorted by connected lesion (26-connectivity),
    each lesion's first index in that order, and its size in voxels."""
    labels, _ = ndi.label(mask > 0, structure=np.ones((3, 3, 3)))
    ids = labels[voxels[:, 0], voxels[:, 1], voxels[:, 2]]
    order = np.argsort(ids, kind="stable")
    _, starts, sizes = np.unique(ids[order], return_index=True, return_counts=True)
    return voxels[order], starts, sizes


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    cx, cy, cz = np.cos(a)
    sx, sy, sz = np.sin(a)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@functools.lru_cache(maxsize=32)
def _interp_matrix(nodes: int, size: int) -> np.ndarray:
    """(size, nodes) linear interpolation weights from ``nodes`` control points to ``size``."""
    pos = np.linspace(0, nodes - 1, size)
    eye = np.eye(nodes, dtype=np.float32)
    return np.stack([np.interp(pos, np.arange(nodes), eye[i]) for i in range(nodes)],
                    axis=1).astype(np.float32)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], nodes: int,
                  amplitude: float) -> np.ndarray:
    """Random smooth field: Gaussian values on a ``nodes``^3 lattice, interpolated (separable)."""
    coarse = rng.normal(0.0, amplitude, (nodes, nodes, nodes)).astype(np.float32)
    wx, wy, wz = (_interp_matrix(nodes, s) for s in shape)
    return np.einsum("ia,jb,kc,abc->ijk", wx, wy, wz, coarse, optimize=True).astype(np.float32)


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...],
                     sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise smoothed with a Gaussian of ``sigma_vox`` voxels.

    ``sigma_vox=0`` gives independent (white) noise. Smoothing correlates neighbouring voxels
    as resampling and k-space filtering do in real scans; the result is rescaled to unit
    standard deviation so the noise level is set separately.
    """
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma_vox > 0:
        n = ndi.gaussian_filter(n, sigma_vox)
        n = n / max(float(n.std()), 1e-6)
    return n.astype(np.float32)


def _paint_ball(out: np.ndarray, centre: np.ndarray, radius: float,
                scale: np.ndarray | None = None) -> None:
    """Raise ``out`` (P, P, P), in place, to a soft ball of ``radius`` voxels at ``centre``
    (1 inside, falling to 0 over one voxel at the edge, within 3 voxels of the centre); with
    ``scale`` (3,) the distances are stretched per axis (an ellipsoid)."""
    lo, hi = np.maximum(centre - 3, 0), np.minimum(centre + 4, out.shape[0])
    offset = np.indices(tuple(hi - lo)).reshape(3, -1).T + lo - centre
    d = np.linalg.norm(offset if scale is None else offset * scale, axis=1)
    sub_ = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    np.maximum(sub_, np.clip(radius + 0.5 - d, 0, 1).astype(np.float32).reshape(sub_.shape),
               out=sub_)


@dataclasses.dataclass
class _Contrast:
    flair: dict[str, float]
    t1: dict[str, float]


def _draw_contrast(rng: np.random.Generator,
                   lesion_contrast: tuple[float, float] = DEFAULT_LESION_CONTRAST,
                   lesion_gm_floor: float = 0.0, contrast_power: float = 1.0,
                   gm_contrast: tuple[float, float] = DEFAULT_GM_CONTRAST) -> _Contrast:
    wm = rng.uniform(0.35, 0.65)
    lo, hi = lesion_contrast
    ratio = (rng.uniform(lo, hi) if contrast_power == 1.0  # as drawn up to model 3.1.0
             else lo + (hi - lo) * rng.uniform() ** contrast_power)
    flair = {"wm": wm, "gm": wm * rng.uniform(*gm_contrast), "csf": wm * rng.uniform(0.03, 0.45),
             "lesion": wm * ratio}
    flair["lesion"] = max(flair["lesion"], flair["gm"] * lesion_gm_floor)  # draws no number
    wm1 = rng.uniform(0.5, 0.9)
    t1 = {"wm": wm1, "gm": wm1 * rng.uniform(0.5, 0.85), "csf": wm1 * rng.uniform(0.08, 0.4),
          "lesion": wm1 * rng.uniform(0.35, 0.95)}
    return _Contrast(flair, t1)


class PatchSampler:
    """Draws (image, label) training patches; deterministic for a given ``seed``."""

    def __init__(self, bank: LesionBank, patch: int = 64, seed: int = 0,
                 lesion_fraction: float = 0.7, hard_negatives: bool = False,
                 lesion_contrast: tuple[float, float] = DEFAULT_LESION_CONTRAST,
                 noise: str = "white", lesion_model: str = "uniform",
                 winsorise: float = 0.0, lesion_gm_floor: float = 0.0,
                 contrast_power: float = 1.0, focus_fraction: float = 0.0,
                 lesionwise_fraction: float = 0.0, caps: str = "ring",
                 gm_contrast: tuple[float, float] = DEFAULT_GM_CONTRAST, gm_field: float = 0.0,
                 healthy_fraction: float = 0.0, confluent_fraction: float = 0.0,
                 small_fraction: float = 0.0, ghosting: float = 0.0,
                 normalisation: str = "median", t1_dropout: float = 0.5,
                 fossa_gain: tuple[float, float] = (1.0, 1.0),
                 focus_balanced: bool = False) -> None:
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
        if lesion_model not in LESION_MODELS:
            raise ValueError(f"lesion_model must be one of {LESION_MODELS}, got {lesion_model!r}")
        _check_share("winsorise", winsorise, "patches")
        if lesion_gm_floor != 0.0 and not 0.8 <= lesion_gm_floor <= 1.5:
            raise ValueError("lesion_gm_floor is a lesion / grey-matter ratio, 0 (off) or "
                             f"0.8-1.5, got {lesion_gm_floor}")
        if not 0.25 <= contrast_power <= 4.0:
            raise ValueError(f"contrast_power must be 0.25-4, got {contrast_power}")
        _check_share("focus_fraction", focus_fraction, "lesion patches")
        _check_share("lesionwise_fraction", lesionwise_fraction, "lesion patches")
        if caps not in CAP_MODELS:
            raise ValueError(f"caps must be one of {CAP_MODELS}, got {caps!r}")
        if not 0.8 <= gm_contrast[0] <= gm_contrast[1] <= 2.0:
            raise ValueError(f"gm_contrast is a grey / white matter ratio range 'lo,hi' within "
                             f"0.8-2, got {gm_contrast}")
        if not 0.0 <= gm_field <= 0.5:
            raise ValueError(f"gm_field is a log-intensity amplitude, 0-0.5, got {gm_field}")
        for name, share in (("healthy_fraction", healthy_fraction),
                            ("confluent_fraction", confluent_fraction),
                            ("small_fraction", small_fraction), ("ghosting", ghosting)):
            _check_share(name, share, "patches")
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, "
                             f"got {normalisation!r}")
        _check_share("t1_dropout", t1_dropout, "patches")
        if not 0.7 <= fossa_gain[0] <= fossa_gain[1] <= 1.6:
            raise ValueError(f"fossa_gain is a posterior-fossa / cerebrum brightness range "
                             f"'lo,hi' within 0.7-1.6, got {fossa_gain}")
        self.fossa_gain = fossa_gain
        self.focus_balanced = focus_balanced
        self.t1_dropout = t1_dropout
        self.gm_contrast = gm_contrast
        self.gm_field = gm_field
        self.healthy_fraction = healthy_fraction
        self.confluent_fraction = confluent_fraction
        self.small_fraction = small_fraction
        self.ghosting = ghosting
        self.normalisation = normalisation
        self.focus_fraction = focus_fraction
        self.lesionwise_fraction = lesionwise_fraction
        # Per mask: its lesion voxels grouped by connected lesion (26-connectivity), with each
        # lesion's first index and size; empty unless asked for.
        self.lesionwise: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        if lesionwise_fraction > 0:
            self.lesionwise = [_group_by_lesion(m, v)
                               for m, v in zip(bank.masks, bank.lesion_voxels, strict=True)]
        # Lesion voxels of each mask in the zones the network finds hardest (MNI zones of
        # ms_core.lesions.location, on the template grid like the bank); empty unless asked for.
        # With focus_balanced, per mask and zone of FOCUS_ZONES (those with lesion voxels only).
        self.focus_voxels: list[np.ndarray] = []
        self.focus_by_zone: list[list[np.ndarray]] = []
        # Template voxels of the posterior fossa, smoothed over 3 mm (fossa_gain only).
        self.fossa: np.ndarray | None = None
        if focus_fraction > 0 or fossa_gain != (1.0, 1.0):
            from ms_core.lesions.location import mni_zones

            zones = mni_zones().masks
            if focus_fraction > 0:
                hard = np.zeros(bank.masks.shape[1:], bool)
                for name in FOCUS_ZONES:
                    hard |= zones[name]
                self.focus_voxels = [v[hard[v[:, 0], v[:, 1], v[:, 2]]]
                                     for v in bank.lesion_voxels]
                if focus_balanced:
                    per_zone = [[v[zones[z][v[:, 0], v[:, 1], v[:, 2]]] for z in FOCUS_ZONES]
                                for v in bank.lesion_voxels]
                    self.focus_by_zone = [[z for z in zs if len(z)] for zs in per_zone]
            if fossa_gain != (1.0, 1.0):
                self.fossa = ndi.gaussian_filter(
                    zones["infratentorial"].astype(np.float32), 3.0)
        self.lesion_gm_floor = lesion_gm_floor
        self.contrast_power = contrast_power
        self.noise = noise
        self.lesion_model = lesion_model
        self.winsorise = winsorise
        self.tpl = load_template()
        self.bank = bank
        self.patch = patch
        self.rng = np.random.default_rng(seed)
        self.lesion_fraction = lesion_fraction
        self.hard_negatives = hard_negatives
        self.lesion_contrast = lesion_contrast
        # Template voxels where "horns" caps may lie: within HORN_MM of the front or the back
        # of the lateral ventricles.
        self.horn_zone: np.ndarray | None = None
        if caps == "horns":
            y_mm = world_grid(self.tpl.shape, self.tpl.affine)[1]
            y_vent = y_mm[self.tpl.ventricles > 0.5]
            self.horn_zone = ((y_mm > y_vent.max() - HORN_MM)
                              | (y_mm < y_vent.min() + HORN_MM)).astype(np.float32)
        self.brain_voxels = np.argwhere(self.tpl.brain > 0.5).astype(np.int16)
        # Coarse (4 mm) tissue fractions for the image-level normalisation statistics.
        sl = (slice(None, None, 4),) * 3
        self.coarse = {"gm": self.tpl.gm[sl], "wm": self.tpl.wm[sl], "csf": self.tpl.csf[sl]}
        self.coarse_brain = self.tpl.brain[sl] > 0.5

    def _median_brain(self, c: dict[str, float], lesion_fraction: float) -> float:
        img = sum(self.coarse[k] * c[k] for k in ("gm", "wm", "csf"))
        vals = np.asarray(img)[self.coarse_brain]
        vals = vals * (1 - lesion_fraction) + c["lesion"] * lesion_fraction
        return float(np.median(vals))

    def patch_coords(self) -> tuple[int, np.ndarray]:
        """A lesion mask index and the template voxel coordinates (3, P**3) of a patch's voxels.

        The patch is centred on a lesion voxel (with ``lesion_fraction``) or a brain voxel,
        then rotated, scaled, flipped and elastically warped.
        """
        rng, p = self.rng, self.patch
        k = int(rng.integers(len(self.bank.names)))
        lesion_vox = self.bank.lesion_voxels[k]
        if rng.random() < self.lesion_fraction and len(lesion_vox):
            # The extra draw only with focus_fraction > 0: earlier patches stay bit-identical.
            if self.focus_fraction > 0 and len(self.focus_voxels[k]) \
                    and rng.random() < self.focus_fraction:
                lesion_vox = self.focus_voxels[k]
                if self.focus_balanced:  # a zone with equal odds, then a voxel of it
                    by_zone = self.focus_by_zone[k]
                    lesion_vox = by_zone[int(rng.integers(len(by_zone)))]
            elif self.lesionwise_fraction > 0 and rng.random() < self.lesionwise_fraction:
                # A lesion drawn uniformly, then a voxel of it: small lesions, the majority
                # by count, are centred as often as large ones.
                grouped, starts, sizes = self.lesionwise[k]
                j = int(rng.integers(len(starts)))
                lesion_vox = grouped[starts[j]:starts[j] + sizes[j]]
            centre = lesion_vox[rng.integers(len(lesion_vox))].astype(np.float64)
        else:
            centre = self.brain_voxels[rng.integers(len(self.brain_voxels))].astype(np.float64)
        centre += rng.uniform(-p / 4, p / 4, 3)

        # Spatial transform (patch voxel -> template voxel), elastic displacement in voxels.
        a = _rotation(rng, 15.0) @ np.diag(rng.uniform(0.85, 1.15, 3))
        if rng.random() < 0.5:
            a = a @ np.diag([-1.0, 1.0, 1.0])
        grid = np.indices((p, p, p), dtype=np.float32).reshape(3, -1) - (p - 1) / 2.0
        coords = (a @ grid) + centre[:, None]
        if rng.random() < 0.7:
            for axis in range(3):
                coords[axis] += _smooth_field(rng, (p, p, p), 4, rng.uniform(0.5, 3.0)).ravel()
        return k, coords

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One patch: image (2, P, P, P) float32 [FLAIR, T1] and label (1, P, P, P) float32."""
        rng, tpl, p = self.rng, self.tpl, self.patch
        k, coords = self.patch_coords()

        def samp(vol: np.ndarray, order: int = 1) -> np.ndarray:
            out = ndi.map_coordinates(vol, coords, order=order, mode="constant", cval=0.0,
                                      prefilter=False)
            return np.asarray(out, dtype=np.float32).reshape(p, p, p)

        gm, wm, brain = samp(tpl.gm), samp(tpl.wm), samp(tpl.brain)
        mimic = np.zeros((p, p, p), np.float32)  # lesion-like, label 0 (hard negatives)
        inside: np.ndarray | None = None
        if self.hard_negatives:  # one brain mask for both channels and the mimics
            inside = brain > rng.uniform(0.2, 0.6)
            horns = None if self.horn_zone is None else samp(self.horn_zone) > 0.5
            mimic = self._mimics(rng, inside, gm, wm, samp(tpl.ventricles), horns)
        lesion = samp(self.bank.masks[k].astype(np.float32))
        # Extra draws only when the options are on: earlier recipes stay bit-identical.
        if self.confluent_fraction > 0 and rng.random() < self.confluent_fraction:
            lesion = self._confluent(rng, lesion, samp, wm)
        if self.small_fraction > 0 and rng.random() < self.small_fraction:
            lesion = np.maximum(lesion, self._small_lesions(rng, wm, brain))
        if self.healthy_fraction > 0 and rng.random() < self.healthy_fraction:
            lesion = np.zeros_like(lesion)
        csf = np.clip(brain - gm - wm, 0.0, 1.0)
        label = (lesion >= 0.5).astype(np.float32)
        lesion_pv = lesion * np.clip(gm + wm + 0.5 * csf, 0.0, 1.0)
        mean_lesion_fraction = float(self.bank.masks[k].sum()) / float(
            (tpl.brain > 0.5).sum())

        c = _draw_contrast(rng, self.lesion_contrast, self.lesion_gm_floor, self.contrast_power,
                           self.gm_contrast)
        # Regional grey matter brightness (FLAIR): insula, claustrum, deep grey matter.
        gm_map: np.ndarray | float = (
            np.exp(_smooth_field(rng, (p, p, p), 4, rng.uniform(0.0, self.gm_field)))
            if self.gm_field > 0 else 1.0)
        # Posterior fossa brightness against the cerebrum (FLAIR, every tissue and lesion).
        fossa_map: np.ndarray | float = 1.0
        if self.fossa is not None:
            fossa_map = 1.0 + (rng.uniform(*self.fossa_gain) - 1.0) * samp(self.fossa)
        # FLAIR lesion contrast minus 1, per voxel ("varied"); None: con["lesion"] everywhere.
        varied = self.lesion_model == "varied" or (self.lesion_model == "mixed"
                                                     and rng.random() < 0.5)
        floor = c.flair["gm"] / c.flair["wm"] * self.lesion_gm_floor
        excess = self._lesion_excess(rng, lesion, label, floor) if varied else None
        channels = []
        for con in (c.flair, c.t1):
            texture = 1.0 + _smooth_field(rng, (p, p, p), 6, 0.04)
            lesion_tex = 1.0 + _smooth_field(rng, (p, p, p), 8, rng.uniform(0.0, 0.15))
            gm_level = con["gm"] * gm_map if con is c.flair else con["gm"]
            img = (gm * gm_level + wm * con["wm"] + csf * con["csf"]) * texture
            level = (con["wm"] * (1.0 + excess) if excess is not None and con is c.flair
                     else con["lesion"])
            img = img * (1 - lesion_pv) + lesion_pv * level * lesion_tex
            if con is c.flair:
                img = img * fossa_map
            if self.noise == "mixed":  # fine tissue texture: vessels, perivascular spaces
                img = img * (1.0 + rng.uniform(0.0, 0.05)
                             * correlated_noise(rng, (p, p, p), rng.uniform(1.0, 2.5)))
            if con is c.flair and self.hard_negatives:
                bright = con["wm"] * rng.uniform(1.2, 2.2)
                img = img * (1 - mimic) + mimic * bright
            if rng.random() < 0.5:  # thick slices along a random axis
                sigma = [rng.uniform(0.0, 0.6)] * 3
                sigma[int(rng.integers(3))] = rng.uniform(1.0, 5.0) / 2.355
                img = ndi.gaussian_filter(img, sigma)
            elif rng.random() < 0.5:
                img = ndi.gaussian_filter(img, rng.uniform(0.2, 0.9))
            img = img * np.exp(_smooth_field(rng, (p, p, p), 3, rng.uniform(0.0, 0.15)))
            if self.ghosting > 0 and rng.random() < self.ghosting:  # faint shifted copy
                img = img + rng.uniform(0.02, 0.08) * np.roll(
                    img, int(rng.integers(p // 8, p // 3)), axis=int(rng.integers(3)))
            if self.noise == "white":
                sigma_n = rng.uniform(0.003, 0.04)
                n1 = rng.standard_normal((p, p, p), dtype=np.float32)
                n2 = rng.standard_normal((p, p, p), dtype=np.float32)
            else:
                sigma_n = con["wm"] * rng.uniform(0.02, 0.20)
                corr = rng.uniform(0.4, 1.2) if rng.random() < 0.6 else 0.0
                n1 = correlated_noise(rng, (p, p, p), corr)
                n2 = correlated_noise(rng, (p, p, p), corr)
            img = np.sqrt((img + sigma_n * n1) ** 2 + (sigma_n * n2) ** 2)
            if con is c.flair and self.winsorise > 0 and rng.random() < self.winsorise:
                img = np.minimum(img, con["wm"] * rng.uniform(1.3, 2.0))
            if self.normalisation == "wm":  # the white-matter level, estimated within 3 %
                img = img / (con["wm"] * math.exp(rng.normal(0.0, 0.03)))
            else:
                img = img / self._median_brain(con, mean_lesion_fraction)
            img = np.power(np.maximum(img, 0.0), math.exp(rng.normal(0.0, 0.15)))
            # Skull-stripped. Without hard negatives each channel draws its own mask level
            # (as the first released model was trained).
            img = img * (inside if inside is not None else brain > rng.uniform(0.2, 0.6))
            channels.append(img.astype(np.float32))
        if rng.random() < self.t1_dropout:  # modality dropout: FLAIR-only input
            channels[1] = np.zeros_like(channels[1])
        return np.stack(channels), label[None]

    def _confluent(self, rng: np.random.Generator, lesion: np.ndarray,
                   samp: Callable[[np.ndarray], np.ndarray], wm: np.ndarray) -> np.ndarray:
        """``lesion`` united with another patient's mask and grown by 1-3 voxels into white
        matter: large confluent lesions (fraction map (P, P, P))."""
        j = int(rng.integers(len(self.bank.names)))
        both = np.maximum(lesion, samp(self.bank.masks[j].astype(np.float32)))
        grown = ndi.binary_dilation(both >= 0.5, structure=ndi.generate_binary_structure(3, 1),
                                    iterations=int(rng.integers(1, 4))) & (wm > 0.4)
        return np.maximum(both, grown.astype(np.float32))

    def _small_lesions(self, rng: np.random.Generator, wm: np.ndarray,
                       brain: np.ndarray) -> np.ndarray:
        """Fraction map (P, P, P) of 1-15 small round lesions of 3-30 mm³ in white matter."""
        p = self.patch
        out = np.zeros((p, p, p), np.float32)
        where = np.argwhere((wm > 0.5) & (brain > 0.5))
        for _ in range(int(rng.integers(1, 16)) if len(where) else 0):
            c = where[rng.integers(len(where))]
            r = (3.0 * rng.uniform(3.0, 30.0) / (4.0 * math.pi)) ** (1.0 / 3.0)
            _paint_ball(out, c, r, rng.uniform(0.7, 1.3, 3))
        return out

    def _lesion_excess(self, rng: np.random.Generator, lesion: np.ndarray,
                       label: np.ndarray, floor: float = 0.0) -> np.ndarray:
        """Per-voxel FLAIR lesion / white-matter ratio minus 1 for ``lesion_model="varied"``.

        Each connected lesion (with its partial-volume fringe) gets its own contrast around a
        patch-wide level, drawn as ``lo + (hi - lo) * u**1.5`` so faint lesions are common; the
        excess falls from the core to ``rim`` (0.6-1) of it at the border over 1-3 voxels. No
        lesion core is fainter than ``floor`` times white matter.
        """
        lo, hi = self.lesion_contrast
        comps, n = ndi.label(lesion > 0.05, structure=np.ones((3, 3, 3)))
        u = np.clip(rng.uniform() + rng.normal(0.0, 0.15, n), 0.0, 1.0)
        per_comp = np.concatenate([[0.0], np.maximum(lo + (hi - lo) * u ** 1.5, floor) - 1.0]
                                  ).astype(np.float32)
        rim, ramp = rng.uniform(0.6, 1.0), rng.uniform(1.0, 3.0)
        depth = ndi.distance_transform_edt(label > 0)  # 1 on the border voxels, 0 outside
        profile = rim + (1.0 - rim) * np.clip((depth - 1.0) / ramp, 0.0, 1.0)
        return (per_comp[comps] * profile).astype(np.float32)

    def _mimics(self, rng: np.random.Generator, inside: np.ndarray, gm: np.ndarray,
                wm: np.ndarray, ventricles: np.ndarray,
                horns: np.ndarray | None = None) -> np.ndarray:
        """Fraction map (P, P, P) of bright non-lesion structures, 0 inside true WM; with
        ``horns`` (bool), periventricular caps only there."""
        p = self.patch
        out = np.zeros((p, p, p), np.float32)
        if rng.random() < 0.6:  # patchy bright rim left by brain extraction
            rim = inside & ~ndi.binary_erosion(inside, iterations=int(rng.integers(1, 3)))
            patchy = _smooth_field(rng, (p, p, p), 6, 1.0) > rng.uniform(-0.3, 0.8)
            out = np.maximum(out, (rim & patchy).astype(np.float32))
        if rng.random() < 0.5:  # dots in grey matter / CSF: vessels, perivascular spaces
            where = np.argwhere(inside & (wm < 0.3))
            for _ in range(int(rng.integers(1, 12)) if len(where) else 0):
                c = where[rng.integers(len(where))]
                _paint_ball(out, c, rng.uniform(0.6, 1.6))
        if rng.random() < 0.4:  # thin periventricular caps (normal finding)
            vent = ventricles > 0.5
            cap = ndi.binary_dilation(vent, iterations=int(rng.integers(1, 3))) & ~vent
            if horns is not None:
                cap &= horns
            out = np.maximum(out, cap.astype(np.float32) * rng.uniform(0.3, 0.8))
        return out
