"""Short, human-readable provenance of a stored pipeline result, for hovers and table cells.

Pure functions: each takes a record already read back from the study's derivatives (the
``provenance.json`` of a segmentation or a comparison, the ``tissue_volumes.json`` or
``pbvc_from_ses-Z.json`` of :mod:`ms_core.longitudinal.atrophy`) and the file's path relative to the
study folder, and returns one line naming the model, the settings and the file the number comes
from. A missing record gives :data:`NOT_MEASURED`; a field missing from a record is left out, never
guessed. Nothing here reads files.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "NOT_MEASURED",
    "change_provenance",
    "model_text",
    "pbvc_provenance",
    "segmentation_provenance",
    "volume_provenance",
]

#: The provenance text of a number that has no current stored result.
NOT_MEASURED = "not measured"
#: Hex digits of a sha256 shown (enough to tell two models apart).
_SHA_DIGITS = 8
_PBVC_METHODS = {"bsi": "boundary shift integral (BSI)", "jacobian": "Jacobian integration"}


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _float(value: object) -> float | None:
    """A stored number as float, or ``None`` when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _num(value: object) -> str | None:
    """A stored number written compactly (``0.5``, ``10``), or ``None`` when not a number."""
    number = _float(value)
    return None if number is None else f"{number:g}"


def _date(record: Mapping[str, object]) -> str | None:
    """The day of ``created_utc`` (``2026-11-25``), or ``None``."""
    created = record.get("created_utc")
    return created[:10] if isinstance(created, str) and created else None


def _ncc(value: object) -> str | None:
    ncc = _float(value)
    return None if ncc is None else f"registration NCC {ncc:.3f}"


def _join(parts: list[str | None], path: str) -> str:
    text = ", ".join(p for p in parts if p)
    return f"{text}; {path}" if path else text


def model_text(model: object) -> str | None:
    """``name vVERSION (sha256 first 8 hex…)`` of a provenance ``model`` entry, or ``None``.

    >>> model_text({"name": "lesion_seg", "version": "2.0.0", "sha256": "5ed5d7042e1c"})
    'lesion_seg v2.0.0 (sha256 5ed5d704…)'
    >>> model_text(None) is None
    True
    """
    info = _mapping(model)
    if not info.get("name"):
        return None
    text = str(info["name"])
    if info.get("version"):
        text += f" v{info['version']}"
    sha = info.get("sha256")
    if isinstance(sha, str) and sha:
        text += f" (sha256 {sha[:_SHA_DIGITS]}…)"
    return text


def _segmentation_settings(params: Mapping[str, object]) -> list[str | None]:
    """Method, threshold, minimum lesion size and the optional steps that were on."""
    threshold, min_mm3 = _num(params.get("threshold")), _num(params.get("min_lesion_mm3"))
    flags = (("tta", "TTA"), ("bias_correction", "N4"), ("denoise", "denoised"),
             ("skull_stripped", "skull-stripped input"))
    return [str(params["method"]) if params.get("method") else None,
            f"threshold {threshold}" if threshold is not None else None,
            f"min {min_mm3} mm³" if min_mm3 is not None else None,
            *(label for key, label in flags if params.get(key) is True)]


def segmentation_provenance(prov: Mapping[str, object] | None, path: str = "") -> str:
    """Where a visit's lesion count and volume come from: its segmentation ``provenance.json``.

    Parameters
    ----------
    prov
        The parsed ``provenance.json`` of ``derivatives/ms_dash/sub-X/ses-Y`` (fields
        ``model``, ``parameters``, ``provider``, ``created_utc``), or ``None``.
    path
        The result file, relative to the study folder (appended after ``;``).

    >>> segmentation_provenance({"model": {"name": "lesion_seg", "version": "2.0.0",
    ...     "sha256": "1a2b3c4d5e6f"}, "parameters": {"method": "network", "threshold": 0.5,
    ...     "min_lesion_mm3": 3.0}, "provider": "CPUExecutionProvider",
    ...     "created_utc": "2026-11-25T10:00:00+00:00"})
    'lesion_seg v2.0.0 (sha256 1a2b3c4d…), network, threshold 0.5, min 3 mm³, \
CPUExecutionProvider, 2026-11-25'
    >>> segmentation_provenance(None)
    'not measured'
    """
    if not prov:
        return NOT_MEASURED
    params = _mapping(prov.get("parameters"))
    model = model_text(prov.get("model"))
    if model is None and params.get("method") == "baseline":
        model = "no network model"
    provider = prov.get("provider")
    return _join([model, *_segmentation_settings(params),
                  str(provider) if provider else None, _date(prov)], path)


def change_provenance(prov: Mapping[str, object] | None, compared_with: str,
                      path: str = "") -> str:
    """Where an interval's new/enlarging counts come from: the comparison's ``provenance.json``.

    ``prov`` is the parsed ``derivatives/ms_dash/sub-X/ses-Y/change_from_ses-Z/provenance.json``
    (``parameters`` of :class:`ms_core.longitudinal.tracking.TrackParams`, ``registration.ncc``,
    ``model``, ``created_utc``) or ``None``; ``compared_with`` is the earlier visit (``ses-Z``).

    >>> change_provenance({"parameters": {"method": "joint", "enlarging_ratio": 0.3,
    ...     "change_z": 2.0, "min_change_mm3": 10.0}, "registration": {"ncc": 0.92491}},
    ...     "ses-01")
    'vs ses-01, joint tracking, enlarging +30 %, change z 2, min change 10 mm³, \
registration NCC 0.925'
    >>> change_provenance({"parameters": {"method": "joint", "intensity_new_z": 5.0}}, "")
    'joint tracking, intensity-led new lesions at z 5'
    """
    if not prov:
        return NOT_MEASURED
    params = _mapping(prov.get("parameters"))
    ratio, change_z = _float(params.get("enlarging_ratio")), _num(params.get("change_z"))
    min_mm3 = _num(params.get("min_change_mm3"))
    led_z = _num(params.get("intensity_new_z"))
    ncc = _mapping(prov.get("registration")).get("ncc")
    if ncc is None:
        ncc = _mapping(prov.get("qc")).get("registration_ncc")
    threshold = _num(_mapping(params.get("segmentation")).get("threshold"))
    return _join([
        f"vs {compared_with}" if compared_with else None,
        f"{params['method']} tracking" if params.get("method") else None,
        f"enlarging +{100 * ratio:g} %" if ratio is not None else None,
        f"change z {change_z}" if change_z is not None else None,
        f"min change {min_mm3} mm³" if min_mm3 is not None else None,
        f"intensity-led new lesions at z {led_z}" if led_z is not None else None,
        _ncc(ncc), model_text(prov.get("model")),
        f"lesion threshold {threshold}" if threshold is not None else None, _date(prov)], path)


def _tool(record: Mapping[str, object]) -> str | None:
    version = record.get("version")
    return f"ms_core {version}" if version else None


def volume_provenance(record: Mapping[str, object] | None, path: str = "") -> str:
    """Where a visit's brain volume and BPF come from: its ``atrophy/tissue_volumes.json``.

    The method is :func:`ms_core.segmentation.tissue.tissue_volumes` (partial-volume tissue
    classification with MNI priors); the record says which sequence was measured and whether the
    lesions of the visit's stored segmentation were filled (its ``inputs`` then list the
    ``lesion_mask``).

    >>> volume_provenance({"parameters": {"modality": "T1w", "lesion_filling": True,
    ...     "segmentation": {"method": "network", "threshold": 0.5}},
    ...     "inputs": {"image": {}, "lesion_mask": {}}, "version": "0.1.0"})
    'T1w tissue classification (MNI priors), lesions filled (network segmentation, \
threshold 0.5), ms_core 0.1.0'
    """
    if not record:
        return NOT_MEASURED
    params = _mapping(record.get("parameters"))
    modality = params.get("modality")
    seg = _mapping(params.get("segmentation"))
    if "lesion_mask" in _mapping(record.get("inputs")):
        threshold = _num(seg.get("threshold"))
        detail = f"{seg['method']} segmentation" if seg.get("method") else "stored segmentation"
        if threshold is not None:
            detail += f", threshold {threshold}"
        filling = f"lesions filled ({detail})"
    elif params.get("lesion_filling") is False:
        filling = "lesion filling off"
    else:
        filling = "lesions not filled (visit not segmented)"
    return _join([f"{modality} tissue classification (MNI priors)" if modality
                  else "tissue classification (MNI priors)", filling, _tool(record),
                  _date(record)], path)


def pbvc_provenance(record: Mapping[str, object] | None, path: str = "") -> str:
    """Where an interval's PBVC comes from: the follow-up's ``atrophy/pbvc_from_ses-Z.json``.

    >>> pbvc_provenance({"baseline_session": "ses-01", "interval_years": 1.8125,
    ...     "method": "bsi", "parameters": {"modality": "T1w", "spacing_mm": 1.0},
    ...     "qc_ncc": 0.98829, "warnings": ["scanner changed"]})
    'vs ses-01 over 1.81 years, boundary shift integral (BSI) on T1w at 1 mm, \
registration NCC 0.988, 1 protocol warning(s)'
    """
    if not record:
        return NOT_MEASURED
    params = _mapping(record.get("parameters"))
    method = record.get("method") or params.get("method")
    method_text = _PBVC_METHODS.get(str(method), str(method)) if method else "PBVC"
    modality, spacing = params.get("modality"), _num(params.get("spacing_mm"))
    if modality:
        method_text += f" on {modality}"
    if spacing is not None:
        method_text += f" at {spacing} mm"
    years = _float(record.get("interval_years"))
    since = f"vs {record['baseline_session']}" if record.get("baseline_session") else None
    if since and years is not None:
        since += f" over {years:.2f} years"
    warnings = record.get("warnings")
    n_warn = len(warnings) if isinstance(warnings, list) else 0
    return _join([since, method_text, _ncc(record.get("qc_ncc")),
                  f"{n_warn} protocol warning(s)" if n_warn else None, _tool(record),
                  _date(record)], path)
