"""Benchmark: which harmonisation makes two visits comparable before subtraction (issue 35).

Usage: ``python bench/harmonisation_check.py [--demo data/demo] [--pairs 4] [--maps-cache DIR]
[--out FILE]`` (default ``bench/results/harmonisation_check.json``).

For each pair, both visits on the follow-up's grid
(:func:`ms_core.longitudinal.tracking.prepare_pair`, the same maps ``bench/track_eval.py`` caches
with ``--maps-cache``) are harmonised by :func:`ms_core.longitudinal.tracking.harmonise_pair` in
both ways: each divided by its white-matter level (``white_matter``, what the change network is
trained on), or the follow-up so and the baseline histogram-matched to it (``histogram``). The
difference follow-up - baseline is summarised where nothing should have changed, leaving out every
voxel either visit's segmentation calls lesion:

- ``wm_median`` / ``gm_median``: its median in white matter (MNI prior > 0.9) and grey matter
  (prior > 0.6): a protocol change that survives harmonisation shows up as an offset, above all
  in grey matter, whose contrast to white matter moves between protocols;
- ``wm_robust_sd``: 1.4826 x its median absolute deviation in white matter (noise, blur and
  residual bias): the floor a real change must rise above.

Pairs: the real open_ms_data longitudinal ``patient12`` (Lesjak et al. 2016, Neuroinformatics
14:403-420; Lesjak et al. 2018, Neuroinformatics 16:51-63; CC-BY), and from the demo study the
no-change (rescan) and 2D protocol-change pairs of ``bench/track_eval.py``.
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
from bench.track_eval import (  # noqa: E402
    P12,
    cached_maps,
    demo_intervals,
    demo_visits,
    interval_pair,
    reacquire_2d,
    rescan_pair,
)
from ms_core.foundation.io import load_volume  # noqa: E402
from ms_core.imaging.anatomy import load_template  # noqa: E402
from ms_core.imaging.preprocess import template_to_subject, warp_from_template  # noqa: E402
from ms_core.longitudinal.tracking import HARMONISATIONS, PairMaps, harmonise_pair  # noqa: E402
from ms_core.segmentation.inference import load_onnx_model  # noqa: E402
from ms_core.segmentation.model_store import load_segmentation_card  # noqa: E402


def pair_figures(maps: PairMaps, follow: Any) -> dict[str, dict[str, float]]:
    """The difference's offsets and spread after each harmonisation (see the docstring)."""
    to_mni = maps.to_mni if maps.to_mni is not None else template_to_subject(follow)
    tpl = load_template()
    wm_prior = warp_from_template(tpl.wm, to_mni, maps.grid)
    gm_prior = warp_from_template(tpl.gm, to_mni, maps.grid)
    quiet = maps.brain & (maps.b_norm > 0) & (np.maximum(maps.prob_b, maps.prob_f) < 0.5)
    wm, gm = quiet & (wm_prior > 0.9), quiet & (gm_prior > 0.6)
    out = {}
    for method in HARMONISATIONS:
        f, b = harmonise_pair(maps.f_norm, maps.b_norm, maps.brain, wm_prior, method)
        d = f - b
        mad = float(np.median(np.abs(d[wm] - np.median(d[wm]))))
        out[method] = {"wm_median": round(float(np.median(d[wm])), 4),
                       "gm_median": round(float(np.median(d[gm])), 4),
                       "wm_robust_sd": round(1.4826 * mad, 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--demo", type=Path, default=REPO / "data" / "demo")
    ap.add_argument("--pairs", type=int, default=4, help="demo pairs of each synthetic kind")
    ap.add_argument("--maps-cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    model = load_onnx_model(load_segmentation_card(), "cpu")
    pairs: dict[str, Any] = {}
    if P12.exists():
        base = load_volume(P12 / "study1_FLAIR.nii.gz", "FLAIR")
        follow = load_volume(P12 / "study2_FLAIR.nii.gz", "FLAIR")
        pairs["patient12 (real)"] = pair_figures(
            cached_maps(args.maps_cache, "patient12", base, follow, model), follow)
    else:
        pairs["patient12 (real)"] = f"skipped: {P12} not found (../shared absent)"
    root = args.demo
    for i, (pid, ses) in enumerate(demo_visits(root, args.pairs)):
        key, base, follow = rescan_pair(root, i, pid, ses)
        maps = cached_maps(args.maps_cache, key, base, follow, model)
        pairs[f"no change {pid} {ses}"] = pair_figures(maps, follow)
    for i, (pid, prev, cur) in enumerate(demo_intervals(root, args.pairs)):
        key, base, follow = interval_pair(root, i, pid, prev, cur, reacquire_2d, " 2d")
        maps = cached_maps(args.maps_cache, key, base, follow, model)
        pairs[f"protocol change {pid} {prev}->{cur}"] = pair_figures(maps, follow)
    figures = [v for v in pairs.values() if isinstance(v, dict)]
    mean_abs = {m: {k: round(float(np.mean([abs(f[m][k]) for f in figures])), 4)
                    for k in ("wm_median", "gm_median", "wm_robust_sd")}
                for m in HARMONISATIONS}
    print_result({"benchmark": "harmonisation_check", "when_utc": now_utc(),
                  "machine": machine(), "unit": "follow-up - baseline, in white-matter units",
                  "pairs": pairs, "mean_absolute_over_pairs": mean_abs},
                 args.out or RESULTS / "harmonisation_check.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
