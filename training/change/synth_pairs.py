"""Synthetic visit pairs for the change-detection network: what appeared, grew, shrank, vanished.

One pair shares its anatomy: a patch of the MNI152 tissue maps with a real lesion mask pasted in
(open_ms_data, Lesjak et al. 2018, Neuroinformatics 16:51-63, CC-BY; all patients except the
validation patient26), drawn and warped by :class:`training.seg.synth_data.PatchSampler`. Each of
the mask's lesions (26-connected) then gets a fate between the visits:

- stable, or (unless the pair is a no-change pair) grown by 1-2.5 voxels into white matter or
  out of a smaller baseline core, shrunk to a core, appeared (absent at baseline) or vanished
  (absent at follow-up); plus, in half the pairs, 1-4 small new lesions of 5-110 mm³ in white
  matter, and in some a small lesion that vanished.

Both visits are rendered from that anatomy on the follow-up's patch grid (FLAIR only):

- **same protocol** (the usual case): one acquisition (thick-slice or isotropic blur, noise
  level and its correlation, gamma) for both visits, each with its own bias field and noise, and
  lesion contrasts within 10 % of each other;
- **protocol change** (``protocol_change_fraction``): the baseline with its own acquisition (2D
  thick slices against 3D, another noise), its own grey matter, CSF and lesion contrasts;
- the baseline is then resampled once with a small rigid error (up to 1° and 0.7 voxel), as
  after registration, and both are divided by their white-matter level (times a 3 % estimation
  error), as :func:`ms_core.imaging.preprocess.white_matter_level` harmonises them at inference, and
  masked by the follow-up's brain mask.

Labels on the follow-up grid: channel 0 is lesion tissue at follow-up that was not lesion at
baseline (new or enlarging, the ``change_mask`` value 1), channel 1 the reverse (shrinking or
disappeared, value 2).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage as ndi

from ms_core.longitudinal.tracking import change_channels
from training.seg.synth_data import (
    LesionBank,
    PatchSampler,
    _draw_contrast,
    _paint_ball,
    _rotation,
    _smooth_field,
    correlated_noise,
)

__all__ = ["FATES", "FATE_ODDS", "PairSampler"]

#: Fates of a lesion between two visits and their odds in a pair with change.
FATES = ("stable", "grow", "shrink", "appear", "vanish")
FATE_ODDS = (0.55, 0.15, 0.10, 0.12, 0.08)
_BALL = np.ones((3, 3, 3), bool)


@dataclasses.dataclass(frozen=True)
class _Acquisition:
    """What a scanner protocol does to a rendered FLAIR."""

    blur: tuple[float, float, float]
    noise: float  # Rician sigma, share of the white-matter level
    noise_corr: float  # voxels; 0 = white noise
    gamma: float
    bias: float  # log amplitude of the smooth bias field


def _draw_acquisition(rng: np.random.Generator) -> _Acquisition:
    if rng.random() < 0.5:  # 2D acquisition: thick slices along a random axis
        blur = [rng.uniform(0.0, 0.6)] * 3
        blur[int(rng.integers(3))] = rng.uniform(1.0, 5.0) / 2.355
    else:
        blur = [rng.uniform(0.2, 0.9) if rng.random() < 0.5 else 0.0] * 3
    corr = rng.uniform(0.4, 1.2) if rng.random() < 0.6 else 0.0
    return _Acquisition((blur[0], blur[1], blur[2]), rng.uniform(0.02, 0.15), corr,
                        math.exp(rng.normal(0.0, 0.15)), rng.uniform(0.0, 0.15))


class PairSampler:
    """Draws (image (3, P, P, P), label (2, P, P, P)) float32 pairs; deterministic per ``seed``.

    ``sampler_options`` go to :class:`training.seg.synth_data.PatchSampler` (patch centring and
    lesion appearance: ``lesion_contrast``, ``lesion_gm_floor``, ``contrast_power``,
    ``gm_contrast``, ``hard_negatives`` ...).
    """

    def __init__(self, bank: LesionBank, patch: int = 64, seed: int = 0, *,
                 no_change_fraction: float = 0.2, protocol_change_fraction: float = 0.3,
                 new_lesion_fraction: float = 0.5, registration_error: float = 1.0,
                 grow_voxels: tuple[float, float] = (1.0, 2.5),
                 new_lesion_mm3: tuple[float, float] = (5.0, 110.0),
                 new_lesion_count: tuple[int, int] = (1, 4),
                 fate_odds: tuple[float, ...] = FATE_ODDS,
                 **sampler_options: object) -> None:
        for name, share in (("no_change_fraction", no_change_fraction),
                            ("protocol_change_fraction", protocol_change_fraction),
                            ("new_lesion_fraction", new_lesion_fraction)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within 0-1, got {share}")
        if not 0.3 <= grow_voxels[0] <= grow_voxels[1] <= 5.0:
            raise ValueError(f"grow_voxels must be 'lo,hi' within 0.3-5, got {grow_voxels}")
        if not 1.0 <= new_lesion_mm3[0] <= new_lesion_mm3[1] <= 500.0:
            raise ValueError(f"new_lesion_mm3 must be 'lo,hi' within 1-500, got {new_lesion_mm3}")
        if not 1 <= new_lesion_count[0] <= new_lesion_count[1] <= 20:
            raise ValueError(f"new_lesion_count must be 'lo,hi' within 1-20, got "
                             f"{new_lesion_count}")
        if len(fate_odds) != len(FATES) or min(fate_odds) < 0 or abs(sum(fate_odds) - 1) > 1e-6:
            raise ValueError(f"fate_odds must be {len(FATES)} shares ({', '.join(FATES)}) "
                             f"summing to 1, got {fate_odds}")
        if not 0.0 <= registration_error <= 3.0:
            raise ValueError(f"registration_error (degrees and 0.7 voxel per unit) must be "
                             f"within 0-3, got {registration_error}")
        self.base = PatchSampler(bank, patch, seed, **sampler_options)  # type: ignore[arg-type]
        self.no_change_fraction = no_change_fraction
        self.protocol_change_fraction = protocol_change_fraction
        self.new_lesion_fraction = new_lesion_fraction
        self.registration_error = registration_error
        self.grow_voxels, self.new_lesion_mm3 = grow_voxels, new_lesion_mm3
        self.new_lesion_count, self.fate_odds = new_lesion_count, tuple(fate_odds)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One pair: [follow-up, baseline, difference] and [appeared/grew, shrank/vanished]."""
        base, rng, p = self.base, self.base.rng, self.base.patch
        k, coords = base.patch_coords()

        def samp(vol: np.ndarray) -> np.ndarray:
            out = ndi.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0,
                                      prefilter=False)
            return np.asarray(out, dtype=np.float32).reshape(p, p, p)

        tpl = base.tpl
        gm, wm, brain = samp(tpl.gm), samp(tpl.wm), samp(tpl.brain)
        csf = np.clip(brain - gm - wm, 0.0, 1.0)
        inside = brain > rng.uniform(0.2, 0.6)
        mimic = (base._mimics(rng, inside, gm, wm, samp(tpl.ventricles))
                 if base.hard_negatives else np.zeros((p, p, p), np.float32))
        lesion = samp(base.bank.masks[k].astype(np.float32))
        if rng.random() < self.no_change_fraction:
            frac_b = frac_f = lesion
        else:
            frac_b, frac_f = self._change(rng, lesion, wm, brain)
        lab_b, lab_f = frac_b >= 0.5, frac_f >= 0.5
        label = np.stack([lab_f & ~lab_b, lab_b & ~lab_f]).astype(np.float32)

        # Shared anatomy texture and per-lesion contrast (excess over white matter).
        union = np.maximum(frac_b, frac_f)
        c = _draw_contrast(rng, base.lesion_contrast, base.lesion_gm_floor, base.contrast_power,
                           base.gm_contrast).flair
        floor = c["gm"] / c["wm"] * base.lesion_gm_floor
        excess = base._lesion_excess(rng, union, (union >= 0.5).astype(np.float32), floor)
        texture = (1.0 + _smooth_field(rng, (p, p, p), 6, 0.04)) * (
            1.0 + rng.uniform(0.0, 0.05) * correlated_noise(rng, (p, p, p),
                                                            rng.uniform(1.0, 2.5)))
        lesion_tex = 1.0 + _smooth_field(rng, (p, p, p), 8, rng.uniform(0.0, 0.15))
        mimic_level = rng.uniform(1.2, 2.2)
        acq_f = _draw_acquisition(rng)
        protocol_change = rng.random() < self.protocol_change_fraction
        if protocol_change:
            acq_b = _draw_acquisition(rng)
            c_b = dict(c, gm=c["wm"] * rng.uniform(*base.gm_contrast),
                       csf=c["wm"] * rng.uniform(0.03, 0.45))
            excess_b = excess * rng.uniform(0.6, 1.5)
        else:
            acq_b = acq_f
            c_b = {key: v * rng.uniform(0.97, 1.03) for key, v in c.items()}
            excess_b = excess * rng.uniform(0.9, 1.1)
        tissue_pv = np.clip(gm + wm + 0.5 * csf, 0.0, 1.0)

        def render(con: dict[str, float], frac: np.ndarray, exc: np.ndarray,
                   acq: _Acquisition) -> np.ndarray:
            pv = frac * tissue_pv
            img = (gm * con["gm"] + wm * con["wm"] + csf * con["csf"]) * texture
            img = img * (1 - pv) + pv * con["wm"] * (1.0 + exc) * lesion_tex
            img = img * (1 - mimic) + mimic * con["wm"] * mimic_level
            if any(acq.blur):
                img = ndi.gaussian_filter(img, acq.blur)
            img = img * np.exp(_smooth_field(rng, (p, p, p), 3, acq.bias))
            sigma = con["wm"] * acq.noise
            n1 = correlated_noise(rng, (p, p, p), acq.noise_corr)
            n2 = correlated_noise(rng, (p, p, p), acq.noise_corr)
            img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
            img = img / (con["wm"] * math.exp(rng.normal(0.0, 0.03)))
            return np.power(np.maximum(img, 0.0), acq.gamma).astype(np.float32)

        follow = render(c, frac_f, excess, acq_f)
        baseline = self._misregister(rng, render(c_b, frac_b, excess_b, acq_b))
        follow, baseline = follow * inside, baseline * inside
        return change_channels(follow, baseline), label

    def _misregister(self, rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
        """``img`` resampled (linear) through a small rigid error about the patch centre."""
        err = self.registration_error
        rot = _rotation(rng, err) if err > 0 else np.eye(3)
        shift = rng.uniform(-0.7, 0.7, 3) * err
        centre = (np.asarray(img.shape) - 1) / 2.0
        offset = centre - rot @ centre + shift
        return np.asarray(ndi.affine_transform(img, rot, offset=offset, order=1, mode="nearest"),
                          dtype=np.float32)

    def _change(self, rng: np.random.Generator, lesion: np.ndarray, wm: np.ndarray,
                brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Baseline and follow-up lesion fraction maps made from one mask's lesions."""
        frac_b, frac_f = lesion.copy(), lesion.copy()
        comps, n = ndi.label(lesion >= 0.5, structure=_BALL)
        fates = rng.choice(len(FATES), size=n, p=self.fate_odds)
        growable = (wm > 0.3) & (brain > 0.5)
        for i, box in enumerate(ndi.find_objects(comps)):
            fate = FATES[int(fates[i])]
            if box is None or fate == "stable":
                continue
            box = tuple(slice(max(s.start - 4, 0), s.stop + 4) for s in box)
            comp = comps[box] == i + 1
            near = ndi.binary_dilation(comp, _BALL, iterations=2) & (lesion[box] > 0)
            if fate in ("appear", "vanish"):
                (frac_b if fate == "appear" else frac_f)[box][near] = 0.0
                continue
            depth = ndi.distance_transform_edt(comp)
            if fate == "grow" and rng.random() < 0.5:  # outward, into white matter
                out = ndi.distance_transform_edt(~comp)
                grown = np.clip(rng.uniform(*self.grow_voxels) + 0.5 - out, 0.0,
                                1.0) * growable[box]
                frac_f[box] = np.maximum(frac_f[box], grown)
                continue
            core = np.clip(depth - rng.uniform(*self.grow_voxels) + 0.5, 0.0, 1.0)
            target = frac_b if fate == "grow" else frac_f  # a smaller core at one visit
            target[box] = np.where(near, np.minimum(target[box], core), target[box])
        if rng.random() < self.new_lesion_fraction:
            lo, hi = self.new_lesion_count
            frac_f = np.maximum(frac_f, self._balls(rng, wm, brain, int(rng.integers(lo, hi + 1))))
        if rng.random() < 0.5 * self.new_lesion_fraction:
            frac_b = np.maximum(frac_b, self._balls(rng, wm, brain, 1))
        return frac_b, frac_f

    def _balls(self, rng: np.random.Generator, wm: np.ndarray, brain: np.ndarray,
               count: int) -> np.ndarray:
        """Fraction map of ``count`` small lesions (``new_lesion_mm3``, by default 5-110 mm³)
        in white matter."""
        out = np.zeros(wm.shape, np.float32)
        where = np.argwhere((wm > 0.5) & (brain > 0.5))
        for _ in range(count if len(where) else 0):
            centre = where[rng.integers(len(where))]
            radius = (3.0 * rng.uniform(*self.new_lesion_mm3) / (4.0 * math.pi)) ** (1.0 / 3.0)
            _paint_ball(out, centre, min(radius, 2.9), rng.uniform(0.75, 1.3, 3))
        return out
