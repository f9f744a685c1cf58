"""Benchmark: which intensity reference stays put across scanners (issue 32).

Usage: ``python bench/normalisation_check.py [--out FILE]`` (default
``bench/results/normalisation_check.json``).

For each scan of the real validation set (open_ms_data patient26, Lesjak et al. 2018,
Neuroinformatics 16:51-63, CC-BY; MSLesSeg P18 and P39, Guarnera et al., Scientific Data 2025,
CC BY 4.0) it prints two candidate intensity references as multiples of the scan's true
white-matter intensity (the median FLAIR where the MNI white-matter prior exceeds 0.9, expert
lesions left out): the brain median (the normalisation of models up to 3.2.0) and the
white-matter level of :func:`ms_core.imaging.preprocess.white_matter_level` on the prior registered
as the segmentation pipeline registers it. A reference that holds at 1.0 on every scan makes the
network see the same intensities at every centre. Grey matter and lesions are printed against
the true white matter too, and the posterior fossa (cerebellum and brainstem,
:func:`ms_core.lesions.location.mni_zones`) against the cerebrum: its grey matter over the
cerebral grey matter and its white matter over the cerebral white matter, the range the
training generator's ``--fossa-gain`` draws from. Scans missing from ``../shared`` are
skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import RESULTS, machine, now_utc, print_result  # noqa: E402
from ms_core.foundation.io import load_lesion_mask, load_volume  # noqa: E402
from ms_core.imaging.anatomy import load_template  # noqa: E402
from ms_core.imaging.preprocess import (  # noqa: E402
    Grid,
    template_to_subject,
    warp_from_template,
    white_matter_level,
)
from ms_core.lesions.location import mni_zones  # noqa: E402
from training.seg.report import REAL_SCANS, available_real_scans  # noqa: E402


def scan_figures(flair_path: Path, mask_path: Path) -> dict[str, Any]:
    """Brain median, white-matter level, grey matter and lesions over the true white matter."""
    flair = load_volume(flair_path, "FLAIR")
    lesions = load_lesion_mask(mask_path).labels > 0
    data = flair.data.astype(np.float32)
    brain = data > 0.01 * float(np.percentile(data[data > 0], 99))
    grid = Grid(flair.shape, flair.affine)
    to_mni = template_to_subject(flair, skull_stripped=True)
    tpl = load_template()
    wm = warp_from_template(tpl.wm, to_mni, grid)
    gm = warp_from_template(tpl.gm, to_mni, grid)
    fossa = warp_from_template(mni_zones().masks["infratentorial"].astype(np.float32), to_mni,
                               grid) > 0.5
    true_wm = float(np.median(data[(wm > 0.9) & brain & ~lesions]))

    def fossa_ratio(tissue: np.ndarray, level: float) -> float:
        inside = float(np.median(data[(tissue > level) & brain & ~lesions & fossa]))
        outside = float(np.median(data[(tissue > level) & brain & ~lesions & ~fossa]))
        return round(inside / outside, 3)

    return {
        "brain_median": round(float(np.median(data[brain])) / true_wm, 3),
        "white_matter_level": round(white_matter_level(data, brain, wm) / true_wm, 3),
        "grey_matter_median": round(float(np.median(data[(gm > 0.7) & brain & ~lesions]))
                                    / true_wm, 3),
        "grey_matter_p90": round(float(np.percentile(data[(gm > 0.7) & brain & ~lesions], 90))
                                 / true_wm, 3),
        "fossa_over_cerebrum_grey_matter": fossa_ratio(gm, 0.7),
        "fossa_over_cerebrum_white_matter": fossa_ratio(wm, 0.7),
        "lesion_median": (round(float(np.median(data[lesions])) / true_wm, 3)
                          if lesions.any() else None),
        "lesion_ml": round(float(lesions.sum()) * float(abs(np.linalg.det(flair.affine[:3, :3])))
                           / 1000.0, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    found = {s.name for s in available_real_scans()}
    scans: dict[str, Any] = {}
    for scan in REAL_SCANS:
        scans[scan.name] = (scan_figures(scan.flair, scan.mask) if scan.name in found
                            else f"skipped: {scan.flair} not found (../shared absent)")
    spread = {key: [min(v[key] for v in scans.values() if isinstance(v, dict)),
                    max(v[key] for v in scans.values() if isinstance(v, dict))]
              for key in ("brain_median", "white_matter_level")} if found else {}
    print_result({
        "benchmark": "normalisation_check", "when_utc": now_utc(), "machine": machine(),
        "unit": "multiples of the scan's true white-matter median", "scans": scans,
        "range_over_scans": spread,
    }, args.out or RESULTS / "normalisation_check.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
