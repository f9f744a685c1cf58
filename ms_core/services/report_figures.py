"""The report's pictures: axial planes of the largest lesions with their outlines, and the trend
figures (lesion load, EDSS, brain volume), as PNG bytes (matplotlib, no display).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ms_core.foundation.domain import Visit
from ms_core.foundation.io import (
    load_lesion_mask,
    load_volume,
)
from ms_core.imaging.preprocess import Grid, resample_to_grid, working_grid
from ms_core.longitudinal.timeline import dmt_periods
from ms_core.services.report_model import N_LESION_IMAGES, ReportImage

__all__ = [
    "axial_plane",
    "lesion_images",
    "trend_figures",
]


#: Two chosen lesions closer than this along z would show nearly the same plane.
_MIN_PLANE_GAP_MM = 6.0



def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()



def axial_plane(data: np.ndarray, affine: np.ndarray, grid: Grid, z_mm: float, *, order: int
                ) -> np.ndarray:
    """An axial (RAS+) plane at world height ``z_mm`` on ``grid``'s x-y pixels, for display.

    ``grid`` is an axis-aligned RAS+ grid (:func:`ms_core.imaging.preprocess.working_grid`). Returns
    (rows, cols) in the radiological convention: row 0 is the most anterior, column 0 the
    patient's right (left of image = patient right).

    >>> from ms_core.imaging.preprocess import Grid
    >>> vol = np.zeros((4, 3, 2)); vol[3, 0, :] = 1  # voxel at the right, posterior corner
    >>> plane = axial_plane(vol, np.eye(4), Grid((4, 3, 2), np.eye(4)), 0.0, order=0)
    >>> plane.shape, int(plane[-1, 0])  # bottom row (posterior), first column (right)
    ((3, 4), 1)
    """
    plane_affine = grid.affine.copy()
    plane_affine[2, 3] = z_mm
    plane = resample_to_grid(data, affine, Grid((grid.shape[0], grid.shape[1], 1), plane_affine),
                             order=order)[:, :, 0]
    return np.ascontiguousarray(plane[::-1, ::-1].T)



def _choose_lesions(lesions: pd.DataFrame, n: int) -> list[pd.Series]:
    """The ``n`` largest lesions whose centroids are on distinct axial planes."""
    chosen: list[pd.Series] = []
    for _, row in lesions.sort_values("volume_ml", ascending=False).iterrows():
        if all(abs(float(row.centroid_z_mm) - float(c.centroid_z_mm)) >= _MIN_PLANE_GAP_MM
               for c in chosen):
            chosen.append(row)
        if len(chosen) == n:
            break
    return chosen



def lesion_images(flair_path: Path, mask_path: Path, lesions: pd.DataFrame,
                  n: int = N_LESION_IMAGES) -> tuple[ReportImage, ...]:
    """Axial FLAIR planes through the ``n`` largest lesions with the lesion mask outlined.

    See the module docstring for the orientation. Raises :class:`InputError` naming an
    unreadable image.
    """
    from matplotlib.figure import Figure

    flair = load_volume(flair_path, "FLAIR")
    mask = load_lesion_mask(mask_path)
    grid = working_grid(flair, 1.0)
    x0, y0 = float(grid.affine[0, 3]), float(grid.affine[1, 3])
    nx, ny = grid.shape[0], grid.shape[1]
    out = []
    for row in _choose_lesions(lesions, n):
        z = float(row.centroid_z_mm)
        img = axial_plane(flair.data, flair.affine, grid, z, order=1)
        lab = axial_plane((mask.labels > 0).astype(np.uint8), mask.affine, grid, z, order=0)
        # display pixel of the centroid: column 0 = largest x, row 0 = largest y
        col = (nx - 1) - (float(row.centroid_x_mm) - x0)
        rrow = (ny - 1) - (float(row.centroid_y_mm) - y0)
        inside = img > 0.05 * float(np.percentile(img, 99.5)) if img.any() else img > 0
        rows_in, cols_in = np.nonzero(inside)
        if rows_in.size:
            r0, r1 = max(rows_in.min() - 4, 0), min(rows_in.max() + 5, img.shape[0])
            c0, c1 = max(cols_in.min() - 4, 0), min(cols_in.max() + 5, img.shape[1])
        else:
            r0, r1, c0, c1 = 0, img.shape[0], 0, img.shape[1]
        img, lab = img[r0:r1, c0:c1], lab[r0:r1, c0:c1]
        vmax = float(np.percentile(img[img > 0], 99.5)) if np.any(img > 0) else 1.0
        fig = Figure(figsize=(3.3, 3.6))
        ax = fig.add_subplot()
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
        if lab.any():
            ax.imshow(np.ma.masked_equal(lab, 0), cmap="autumn", alpha=0.35,
                      interpolation="nearest")
            ax.contour(lab, levels=[0.5], colors="red", linewidths=0.7)
        ax.add_patch(_circle((col - c0, rrow - r0), 9.0))
        ax.annotate(str(int(row.lesion_id)), (col - c0 + 8, rrow - r0 - 8), color="yellow",
                    fontsize=9, fontweight="bold")
        h, w = img.shape
        for text, xy in (("R", (3, h / 2)), ("L", (w - 10, h / 2)), ("A", (w / 2, 10)),
                         ("P", (w / 2, h - 3))):
            ax.text(xy[0], xy[1], text, color="cyan", fontsize=9, fontweight="bold")
        ax.set_axis_off()
        location = str(row.get("location", "")).replace("_", " ")
        ax.set_title(f"lesion {int(row.lesion_id)}: {location}, {float(row.volume_ml):.2f} ml",
                     fontsize=8)
        out.append(ReportImage(
            title=f"Lesion {int(row.lesion_id)}", png=_png(fig),
            caption=(f"Axial FLAIR at z = {z:.1f} mm (RAS+), 1 mm pixels; left of image = "
                     f"patient right. Red: lesion mask outline; yellow: lesion "
                     f"{int(row.lesion_id)}.")))
    return tuple(out)



def _circle(xy: tuple[float, float], radius: float) -> Any:
    from matplotlib.patches import Circle

    return Circle(xy, radius, fill=False, edgecolor="yellow", linewidth=1.0)



def _dates(values: Iterable[Any]) -> np.ndarray:
    """(N,) datetime64[D] for matplotlib's date axis."""
    return np.array([pd.Timestamp(v).to_datetime64() for v in values], dtype="datetime64[D]")



def _date_axis(ax: Any, dates: np.ndarray) -> None:
    """Same date range (all visits, 4 months' margin) and concise ticks on every trend panel."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    margin = np.timedelta64(120, "D")
    ax.set_xlim(dates.min() - margin, dates.max() + margin)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)



def trend_figures(visits: Sequence[Visit], measured: pd.DataFrame) -> tuple[ReportImage, ...]:
    """EDSS step plot (with relapses and DMT bands) and measured lesion trends, as PNGs."""
    from matplotlib.figure import Figure

    out = []
    dates = _dates(v.acq_date for v in visits)
    edss = [np.nan if v.edss is None else float(v.edss) for v in visits]
    if any(not math.isnan(e) for e in edss):
        fig = Figure(figsize=(7.2, 2.6))
        ax = fig.add_subplot()
        palette = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f")
        for i, period in enumerate(dmt_periods(visits).itertuples(index=False)):
            start, end = pd.Timestamp(period.start), pd.Timestamp(period.end)
            ax.axvspan(start.to_pydatetime(), end.to_pydatetime(),
                       color=palette[i % len(palette)], alpha=0.25, lw=0)
            ax.text(start.to_pydatetime(), 0.98, f" {period.dmt}", fontsize=7, va="top",
                    transform=ax.get_xaxis_transform())
        filled = pd.Series(edss).ffill().to_numpy()
        ax.step(dates, filled, where="post", color="#1f77b4", lw=1.5)
        ax.plot(dates, edss, "o", color="#1f77b4", ms=4, label="EDSS")
        counts = np.array([v.relapses_since_last or 0 for v in visits])
        hit = counts > 0
        if hit.any():
            ax.scatter(dates[hit], filled[hit], marker="*", s=60 + 40 * counts[hit],
                       color="crimson", zorder=3, label="relapses since last visit")
        ax.set_ylim(max(0.0, np.nanmin(edss) - 1.0), min(10.0, np.nanmax(edss) + 1.5))
        ax.set_ylabel("EDSS", fontsize=8)
        ax.legend(loc="lower right", fontsize=7)
        _date_axis(ax, dates)
        out.append(ReportImage(
            title="EDSS", png=_png(fig),
            caption=("EDSS per visit (steps hold the last value), relapses since the previous "
                     "visit (stars) and disease-modifying therapy (bands, from the visit it was "
                     "recorded at); from the sessions table.")))
    seg = measured[measured["segmented"]]
    if len(seg):
        fig = Figure(figsize=(7.2, 2.3))
        axes = [fig.add_subplot(1, 3, i) for i in (1, 2, 3)]
        mdates = _dates(seg["acq_date"])
        axes[0].plot(mdates, seg["lesion_volume_ml"], "o-", color="crimson")
        if seg["lesion_volume_low_ml"].notna().any():  # the plausible range, as a band
            axes[0].fill_between(mdates, seg["lesion_volume_low_ml"],
                                 seg["lesion_volume_high_ml"], color="crimson", alpha=0.15,
                                 linewidth=0)
        axes[0].set_title("Lesion volume (ml)", fontsize=8)
        axes[1].plot(mdates, seg["lesion_count"], "s-", color="#555555")
        axes[1].set_title("Lesion count", fontsize=8)
        comp = measured[measured["new"].notna()]
        if len(comp):
            cdates = _dates(comp["acq_date"])
            axes[2].bar(cdates, comp["new"], width=80, color="crimson", label="new")
            axes[2].bar(cdates, comp["enlarging"], width=80, bottom=comp["new"],
                        color="orange", label="enlarging")
            axes[2].legend(fontsize=7)
        else:
            axes[2].text(0.5, 0.5, "no interval compared", ha="center", va="center",
                         transform=axes[2].transAxes, fontsize=8)
        axes[2].set_title("New or enlarging since previous visit", fontsize=8)
        for ax in axes:
            _date_axis(ax, dates)
            ax.set_ylim(bottom=0)
        fig.tight_layout()
        out.append(ReportImage(
            title="Lesion trends", png=_png(fig),
            caption=("Network segmentation per visit and lesion matching against the previous "
                     "visit; visits or intervals not analysed are left out.")))
    return tuple(out)
