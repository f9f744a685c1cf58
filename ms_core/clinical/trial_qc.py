"""Quality control of a study's stored results for the trial view: per visit, the share of lesion
volume the network was unsure of, registration quality and protocol warnings.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ms_core.clinical.statistics import finite_number
from ms_core.foundation.domain import Visit
from ms_core.foundation.errors import InputError
from ms_core.lesions.visits import visit_metadata_warnings
from ms_core.longitudinal.measurements import visit_lesion_table
from ms_core.longitudinal.tracking import TrackParams, tracking_status
from ms_core.study.layout import Study

__all__ = [
    "MIN_REGISTRATION_NCC",
    "QC_COLUMNS",
    "UNCERTAIN_PROB",
    "UNCERTAIN_VOLUME_FRACTION",
    "study_qc_table",
    "uncertain_volume_fraction",
    "visit_qc_table",
]


#: Columns of :func:`visit_qc_table`.
QC_COLUMNS = (
    "participant_id", "session_id", "acq_date", "compared_with", "qc_flags", "protocol_change",
    "registration_ncc", "image_qc", "segmented", "lesion_volume_ml",
    "uncertain_volume_fraction",
)



#: A segmented lesion is *uncertain* when its mean lesion probability is below this.
UNCERTAIN_PROB = 0.7



#: A visit is flagged when uncertain lesions hold more than this fraction of its lesion volume.
UNCERTAIN_VOLUME_FRACTION = 0.25



#: Registration QC: the stored comparison is flagged below this normalised cross-correlation
#: (the threshold of :mod:`ms_core.longitudinal.tracking`).
MIN_REGISTRATION_NCC = 0.8



# ============================================================================== QC
def uncertain_volume_fraction(lesions: pd.DataFrame, *, prob_below: float = UNCERTAIN_PROB
                              ) -> float:
    """Fraction of the lesion volume in lesions whose ``mean_prob`` is below ``prob_below``.

    Parameters
    ----------
    lesions
        A ``lesions.csv`` table with ``volume_ml`` (ml) and ``mean_prob`` columns.

    Returns
    -------
    float
        In [0, 1]; NaN without lesions (no volume) or without probabilities.

    >>> t = pd.DataFrame({"volume_ml": [0.3, 0.1], "mean_prob": [0.9, 0.6]})
    >>> uncertain_volume_fraction(t)
    0.25
    """
    missing = [c for c in ("volume_ml", "mean_prob") if c not in lesions.columns]
    if missing:
        raise ValueError(f"lesion table lacks columns {missing}; it has {list(lesions.columns)}")
    volume = lesions["volume_ml"].to_numpy(dtype=np.float64)
    prob = lesions["mean_prob"].to_numpy(dtype=np.float64)
    total = float(volume.sum())
    if total <= 0 or np.isnan(prob).all():
        return math.nan
    return round(float(volume[prob < prob_below].sum()) / total, 6)



def visit_qc_table(root: Path, visits: Sequence[Visit], params: TrackParams = TrackParams(), *,
                   prob_below: float = UNCERTAIN_PROB,
                   max_uncertain: float = UNCERTAIN_VOLUME_FRACTION,
                   min_ncc: float = MIN_REGISTRATION_NCC) -> pd.DataFrame:
    """QC of one patient's visits (date order), one row each (:data:`QC_COLUMNS`).

    * ``protocol_change``: scanner or field-strength change since the previous visit, from the
      session table (:func:`ms_core.lesions.visits.visit_metadata_warnings`); always available.
    * ``registration_ncc``, ``image_qc``: from the current stored comparison with the previous
      visit (NaN / empty when not compared): its registration NCC and its image-based warnings
      (voxel size, orientation, intensity profile, poor registration).
    * ``uncertain_volume_fraction``: :func:`uncertain_volume_fraction` of the current stored
      segmentation (NaN when not segmented or without lesions).
    * ``qc_flags``: the rules that fire, ``"; "``-joined: protocol change, NCC below ``min_ncc``,
      image QC warnings, uncertain fraction above ``max_uncertain``.

    Raises
    ------
    InputError
        naming a stored lesion table that cannot be read.
    """
    ordered = sorted(visits, key=lambda v: (v.acq_date, v.session_id))
    rows = []
    for prev, visit in itertools.pairwise([None, *ordered]):
        assert visit is not None  # pairwise over [None, *ordered]: only ``prev`` can be None
        flags: list[str] = []
        protocol = visit_metadata_warnings(prev, visit) if prev is not None else []
        flags += [f"protocol: {w}" for w in protocol]
        prov = tracking_status(root, prev, visit, params) if prev is not None else None
        ncc, image_qc = math.nan, []
        if prov is not None:
            registration = prov.get("registration")
            qc = prov.get("qc")
            stored = (finite_number(registration.get("ncc")) if isinstance(registration, dict)
                      else None)
            ncc = math.nan if stored is None else stored
            warnings = qc.get("protocol_warnings", []) if isinstance(qc, dict) else []
            image_qc = [str(w) for w in warnings]
            if ncc < min_ncc and not any("NCC" in w for w in image_qc):
                flags.append(f"registration NCC {ncc:.2f} < {min_ncc:.2f}")
            flags += [f"image QC: {w}" for w in image_qc]
        lesions = visit_lesion_table(root, visit, params.segmentation)
        uncertain = volume = math.nan
        if lesions is not None:
            volume = float(lesions["volume_ml"].sum())
            if "mean_prob" in lesions.columns and len(lesions):
                uncertain = uncertain_volume_fraction(lesions, prob_below=prob_below)
            if uncertain == uncertain and uncertain > max_uncertain:
                flags.append(f"{uncertain:.0%} of lesion volume has mean probability "
                             f"< {prob_below:g}")
        rows.append({
            "participant_id": visit.participant_id, "session_id": visit.session_id,
            "acq_date": pd.Timestamp(visit.acq_date),
            "compared_with": prev.session_id if prev is not None else "",
            "protocol_change": "; ".join(protocol), "registration_ncc": ncc,
            "image_qc": "; ".join(image_qc), "segmented": lesions is not None,
            "lesion_volume_ml": volume, "uncertain_volume_fraction": uncertain,
            "qc_flags": "; ".join(flags),
        })
    return pd.DataFrame(rows, columns=list(QC_COLUMNS))



def study_qc_table(study: Study, params: TrackParams = TrackParams()
                   ) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """:func:`visit_qc_table` of every patient, concatenated, and messages for unreadable
    files (that patient's rows are left out)."""
    frames: list[pd.DataFrame] = []
    problems: list[str] = []
    for pid in study.participants:
        visits = study.visits.get(pid, ())
        if not visits:
            continue
        try:
            frames.append(visit_qc_table(study.root, visits, params))
        except InputError as e:
            problems.append(f"QC of {pid} skipped: {e}")
    if not frames:
        return pd.DataFrame(columns=list(QC_COLUMNS)), tuple(problems)
    return pd.concat(frames, ignore_index=True), tuple(problems)
