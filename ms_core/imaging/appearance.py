"""How lesions look on FLAIR: intensities relative to normal-appearing white matter.

Used to check that the demo study's synthetic lesions look like real ones
(``bench/flair_appearance.py`` compares them with patient26 of open_ms_data) and by the demo's
tests. Every figure is a multiple of the white-matter level:

- ``white_matter``: the mode of the brain's FLAIR histogram away from lesions (white matter is
  the largest tissue class on FLAIR), in the image's own units;
- ``lesion_median`` and the 10th / 90th percentile over lesion voxels;
- ``core`` (lesion voxels more than one voxel inside the label) and ``inner_rim`` (the label's
  outermost voxels): how graded the lesion is;
- ``ring_1`` and ``ring_2``: the first and second voxel shells outside the label, inside the
  brain: how far the hyperintensity spills past the boundary;
- ``per_lesion_mean``: the lowest, median and highest mean over lesions of >= 20 voxels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

RING = np.ones((3, 3, 3), dtype=bool)


def white_matter_mode(image: np.ndarray, brain: np.ndarray) -> float:
    """The FLAIR histogram's mode inside ``brain`` (white matter), from 400 bins to the 99th
    percentile, smoothed over 5 bins."""
    values = image[brain]
    hist, edges = np.histogram(values, bins=400, range=(0.0, float(np.percentile(values, 99))))
    hist = np.convolve(hist, np.ones(5) / 5.0, mode="same")
    hist[:20] = 0  # CSF and background
    i = int(np.argmax(hist))
    return float(0.5 * (edges[i] + edges[i + 1]))


def appearance(image: np.ndarray, lesions: np.ndarray, brain: np.ndarray) -> dict[str, Any]:
    """The figures listed in the module docstring for one FLAIR ``image``, its boolean lesion
    mask and brain mask (same grid)."""
    lesions = lesions & brain
    if not lesions.any():
        raise ValueError("no lesion voxel inside the brain")
    grown1 = ndi.binary_dilation(lesions, RING)
    grown2 = ndi.binary_dilation(grown1, RING)
    near = ndi.binary_dilation(grown2, RING)
    wm = white_matter_mode(image, brain & ~near)
    rel = image / wm
    core = ndi.binary_erosion(lesions, RING)
    ring1 = grown1 & ~lesions & brain
    ring2 = grown2 & ~grown1 & brain
    labels, n = ndi.label(lesions, RING)
    sizes = ndi.sum_labels(lesions, labels, np.arange(1, n + 1))
    means = ndi.mean(rel, labels, np.arange(1, n + 1))
    big = np.asarray(means)[np.asarray(sizes) >= 20]

    def mean(mask: np.ndarray) -> float | None:
        return round(float(rel[mask].mean()), 3) if mask.any() else None

    p10, p50, p90 = np.percentile(rel[lesions], [10, 50, 90])
    return {
        "white_matter": round(wm, 3),
        "lesion_median": round(float(p50), 3),
        "lesion_p10": round(float(p10), 3), "lesion_p90": round(float(p90), 3),
        "core": mean(core), "inner_rim": mean(lesions & ~core),
        "ring_1": mean(ring1), "ring_2": mean(ring2),
        "per_lesion_mean": ([round(float(v), 3) for v in np.percentile(big, [0, 50, 100])]
                            if big.size else None),
        "lesions": int(n), "lesions_ge_20_voxels": int(big.size),
    }
