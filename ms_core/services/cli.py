"""The ``python -m ms_core`` command line.

Commands print results to stdout and problems to stderr; bad input exits with status 2 and a
message naming the file and the problem (never a traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ms_core import __version__
from ms_core.foundation.errors import InputError

__all__ = ["build_parser", "main"]

log = logging.getLogger("ms_core")


def _cmd_demo(args: argparse.Namespace) -> int:
    from ms_core.synthetic.demo import DemoConfig, build_demo

    config = DemoConfig(seed=args.seed, n_patients=args.patients, workers=args.workers)
    out = build_demo(Path(args.out), config)
    print(json.dumps({"study": str(out), "patients": args.patients, "seed": args.seed}))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ms_core.foundation.io import load_volume
    from ms_core.study.layout import load_study

    study = load_study(Path(args.study))
    problems = [str(i) for i in study.issues if i.severity == "error"]
    warnings = [str(i) for i in study.issues if i.severity == "warning"]
    if args.deep:
        for visits in study.visits.values():
            for visit in visits:
                for modality, path in visit.images.items():
                    try:
                        load_volume(path, modality)
                    except InputError as e:
                        problems.append(str(e))
    n_visits = sum(len(v) for v in study.visits.values())
    print(json.dumps({"study": str(study.root), "participants": len(study.participants),
                      "visits": n_visits, "errors": problems, "warnings": warnings}, indent=2))
    return 1 if problems else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ms_core.foundation.io import load_lesion_mask
    from ms_core.segmentation.evaluate import evaluate_masks

    if args.min_lesion_mm3 < 0:
        raise InputError(None, f"--min-lesion-mm3 must be >= 0, got {args.min_lesion_mm3}")
    metrics = evaluate_masks(load_lesion_mask(args.pred), load_lesion_mask(args.truth),
                             min_lesion_mm3=args.min_lesion_mm3)
    print(json.dumps({**metrics, "pred": str(args.pred), "truth": str(args.truth)}, indent=2))
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from ms_core.segmentation.segment import SegmentParams, segment_files

    params = SegmentParams(method=args.method, threshold=args.threshold,
                           min_lesion_mm3=args.min_lesion_mm3, skull_stripped=args.skull_stripped,
                           device=args.device, overlap=args.overlap, tta=args.tta,
                           bias_correction=args.n4, denoise=args.denoise)

    def progress(fraction: float) -> None:
        if args.verbose:
            print(f"\rsegmenting: {fraction:4.0%}", end="", file=sys.stderr, flush=True)

    result = segment_files(Path(args.flair), Path(args.t1) if args.t1 else None, Path(args.out),
                           params, progress)
    if args.verbose:
        print(file=sys.stderr)
    print(json.dumps({"out": str(args.out), "n_lesions": len(result.table),
                      "lesion_volume_ml": round(float(result.table.volume_ml.sum()), 4),
                      "provider": result.provider, "seconds": result.seconds}))
    return 0


def _cmd_track(args: argparse.Namespace) -> int:
    from ms_core.longitudinal.tracking import TrackParams, track_files
    from ms_core.segmentation.segment import SegmentParams

    seg = SegmentParams(method=args.seg_method, threshold=args.threshold,
                        min_lesion_mm3=args.min_lesion_mm3, skull_stripped=args.skull_stripped,
                        device=args.device)
    params = TrackParams(method=args.method, segmentation=seg,
                         enlarging_ratio=args.enlarging_pct / 100.0, change_z=args.change_z,
                         harmonisation=args.harmonisation,
                         change_threshold=args.change_threshold,
                         intensity_new_z=(TrackParams.intensity_new_z
                                          if args.intensity_new_z is None
                                          else args.intensity_new_z or None))
    if (args.baseline_t1 is None) != (args.followup_t1 is None) or (
            args.baseline_t1 and not args.atrophy):
        raise InputError(None, "--baseline-t1 and --followup-t1 go together, with --atrophy")
    atrophy = None
    if args.atrophy:
        from ms_core.longitudinal.tracking import AtrophyRequest

        atrophy = (AtrophyRequest(Path(args.baseline_t1), Path(args.followup_t1))
                   if args.baseline_t1 else AtrophyRequest(Path(args.baseline_flair),
                                                           Path(args.followup_flair), "FLAIR"))
    result = track_files(Path(args.baseline_flair), Path(args.followup_flair), Path(args.out),
                         params, atrophy=atrophy)
    counts = result.table.status.value_counts().to_dict() if len(result.table) else {}
    print(json.dumps({"out": str(args.out), "status_counts": {k: int(v) for k, v in
                                                               counts.items()},
                      "registration_ncc": result.registration.ncc, "qc": result.qc,
                      **({"change_model": result.change_model} if result.change_model else {}),
                      "provider": result.provider, "seconds": result.seconds}))
    return 0


def _cmd_train_prognosis(args: argparse.Namespace) -> int:
    from ms_core.clinical.prognosis_fit import (
        FitConfig,
        fit_prognosis,
        read_cohort_table,
        write_model,
    )

    table = read_cohort_table(Path(args.cohort))
    config = FitConfig(seed=args.seed, test_fraction=args.test_fraction, fast=args.fast)
    try:
        result = fit_prognosis(table, config)
    except ValueError as e:
        raise InputError(Path(args.cohort), str(e)) from e
    command = " ".join(["python -m ms_core train-prognosis", *sys.argv[2:]])
    folder = write_model(result, Path(args.out), command=command, data_description=(
        f"{args.cohort}: {table.patient_id.nunique()} patients, {len(table)} rows"))
    test = result.test
    print(json.dumps({"out": str(folder), "family": result.family, "test_auc": test["auc"],
                      "test_auc_ci95": test["auc_ci95"], "ece": test["ece"],
                      "brier": test["brier"], "threshold": result.threshold,
                      "sensitivity": test["sensitivity"], "specificity": test["specificity"],
                      "seconds": result.seconds}, indent=2))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import os

    from ms_core.segmentation.model_store import MODELS_DIR
    from ms_core.services.report import build_report, write_report

    report = build_report(Path(args.study), args.participant, session_id=args.session,
                          models_dir=args.models or os.environ.get("MS_DASH_MODELS", MODELS_DIR))
    html_path, pdf_path = write_report(report, Path(args.out) if args.out else None)
    _audit("exported", args.study, args.participant, report.session_id,
           f"report written by the CLI: {html_path.name}, {pdf_path.name}")
    print(json.dumps({"html": str(html_path), "pdf": str(pdf_path),
                      "session_id": report.session_id, "not_measured": dict(report.missing)}))
    return 0


def _cmd_register_model(args: argparse.Namespace) -> int:
    from ms_core.services.register import register_segmentation_model

    command = " ".join(["python -m ms_core register-model", *sys.argv[2:]])
    card = register_segmentation_model(Path(args.onnx), Path(args.contract), Path(args.out),
                                       command=command)
    smoke = card["registration"]["smoke"]
    print(json.dumps({"out": str(Path(args.out)), "name": card["name"],
                      "version": card["version"], "sha256": card["sha256"], "smoke": smoke,
                      "use": f"MS_DASH_MODELS={args.out} python -m ms_core segment ..."},
                     indent=2))
    for warning in smoke["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _audit(action: str, study: str, participant_id: str | None, session_id: str | None,
           detail: str) -> None:
    """An audit-trail record as the OS user (:func:`ms_core.study.audit.record_or_log`: a log that
    cannot be written is reported on stderr and the command goes on)."""
    from ms_core.study import audit

    audit.record_or_log(action, user=audit.local_user(), study=study,
                        participant_id=participant_id, session_id=session_id,
                        detail=detail[:200])


def _cmd_import(args: argparse.Namespace) -> int:
    from ms_core.imaging.dicom import SeriesChoiceError
    from ms_core.services.importer import import_visit

    files = {"FLAIR": Path(args.flair)}
    if args.t1:
        files["T1w"] = Path(args.t1)
    series = {m: uid for m, uid in (("FLAIR", args.flair_series), ("T1w", args.t1_series))
              if uid}

    def progress(fraction: float, text: str) -> None:
        if args.verbose:
            print(f"\r{text}: {fraction:4.0%}   ", end="", file=sys.stderr, flush=True)

    try:
        visit = import_visit(Path(args.study), args.participant, args.session, files,
                             acq_date=args.date, edss=args.edss,
                             relapses_since_last=args.relapses, dmt=args.dmt,
                             replace=args.replace, series=series, converter=args.converter,
                             progress=progress)
    except SeriesChoiceError as e:
        for s in e.series:  # the UIDs to pass to --flair-series / --t1-series
            print(f"{s.uid}\t{s.label}", file=sys.stderr)
        raise
    if args.verbose:
        print(file=sys.stderr)
    _audit("imported", args.study, visit.participant_id, visit.session_id,
           ", ".join(sorted(visit.images)))
    print(json.dumps({"study": str(args.study), "participant_id": visit.participant_id,
                      "session_id": visit.session_id, "acq_date": visit.acq_date.isoformat(),
                      "images": {m: str(p) for m, p in visit.images.items()},
                      "scanner": visit.scanner, "field_strength_t": visit.field_strength_t}))
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from ms_core.services.batch import BatchConfig, run_batch

    config = BatchConfig(workers=args.workers, threads=args.threads, backend=args.backend,
                         ray_address=args.ray_address, gpus_per_task=args.gpus_per_task,
                         stages=tuple(args.stages.split(",")),
                         participants=tuple(p for p in (args.participants or "").split(",") if p),
                         seg_method=args.seg_method)

    def progress(done: int, total: int, pid: str) -> None:
        bar = "#" * round(30 * done / total)
        print(f"\r[{bar:<30}] {done}/{total} tasks (last: {pid})   ", end="", file=sys.stderr,
              flush=True)

    result = run_batch(Path(args.study), config, progress)
    print(file=sys.stderr)
    _audit("segmented", args.study, None, None,
           f"batch CLI: {len(result.outcomes)} patients, stages {','.join(config.stages)}, "
           f"{len(result.failures)} failures")
    for failure in result.failures:
        print(f"failed: {failure['participant_id']} {failure['stage']} {failure['visit']}: "
              f"{failure['error']}", file=sys.stderr)
    print(json.dumps({"study": str(args.study), "patients": len(result.outcomes),
                      "rows": len(result.table), "failures": len(result.failures),
                      "outputs": [str(p) for p in result.table_paths],
                      "report": str(result.report_path), "seconds": round(result.seconds, 1)}))
    return 1 if result.failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ms_core",
        description="MS MRI dashboard library: studies, demo data, segmentation, "
                    "lesion tracking and evaluation.")
    parser.add_argument("--version", action="version", version=f"ms_core {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="build the synthetic demo study (deterministic by seed)")
    demo.add_argument("--out", required=True, help="study folder to create (replaced if present)")
    demo.add_argument("--seed", type=int, default=20261125)
    demo.add_argument("--patients", type=int, default=12)
    demo.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    demo.set_defaults(func=_cmd_demo)

    val = sub.add_parser("validate", help="check a study folder and list its problems")
    val.add_argument("study", help="study folder")
    val.add_argument("--deep", action="store_true", help="also read every image's voxel data")
    val.set_defaults(func=_cmd_validate)

    imp = sub.add_parser("import", help="add a visit (NIfTI or DICOM zip/folder) to a study "
                                        "(docs/import.md)")
    imp.add_argument("study", help="study folder (created if missing or empty)")
    imp.add_argument("--participant", required=True, help="participant id, e.g. sub-13")
    imp.add_argument("--session", required=True, help="session id, e.g. ses-01")
    imp.add_argument("--date", required=True, help="visit date YYYY-MM-DD")
    imp.add_argument("--flair", required=True, help="FLAIR: .nii/.nii.gz, DICOM .zip or folder")
    imp.add_argument("--t1", help="optional T1w: .nii/.nii.gz, DICOM .zip or folder")
    imp.add_argument("--edss", type=float, help="EDSS (0-10, steps of 0.5)")
    imp.add_argument("--relapses", type=int, help="relapses since the last visit")
    imp.add_argument("--dmt", help="disease-modifying therapy")
    imp.add_argument("--flair-series", help="SeriesInstanceUID when the FLAIR zip has several")
    imp.add_argument("--t1-series", help="SeriesInstanceUID when the T1w zip has several")
    imp.add_argument("--converter", choices=("auto", "dcm2niix", "pydicom"), default="auto",
                     help="DICOM pixel decoder (auto: dcm2niix when installed)")
    imp.add_argument("--replace", action="store_true",
                     help="replace the visit if it exists (its old results are removed)")
    imp.set_defaults(func=_cmd_import)
    seg = sub.add_parser("segment", help="segment lesions in a FLAIR (network or baseline)")
    seg.add_argument("--flair", required=True, help="FLAIR image (NIfTI)")
    seg.add_argument("--t1", help="optional T1w image of the same visit")
    seg.add_argument("--skull-stripped", action="store_true",
                     help="inputs are already brain-extracted: skip brain extraction")
    seg.add_argument("--threshold", type=float, default=0.5, help="probability threshold")
    seg.add_argument("--min-lesion-mm3", type=float, default=10.0,
                     help="drop lesions smaller than this (mm^3)")
    seg.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    seg.add_argument("--method", choices=("network", "baseline"), default="network")
    # Defaults as ms_core.segmentation.segment.SegmentParams (not imported here: the CLI starts
    # fast).
    seg.add_argument("--overlap", type=float, default=0.25,
                     help="sliding-window overlap [0, 1) (default 0.25)")
    seg.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                     help="flip test-time augmentation: the windows are also run flipped in x, "
                          "y and z and averaged (4 passes; on by default)")
    seg.add_argument("--n4", action="store_true",
                     help="N4 bias-field correction inside the brain before normalisation "
                          "(off by default; see docs/preprocessing.md)")
    seg.add_argument("--denoise", action="store_true",
                     help="curvature-flow denoising inside the brain before normalisation "
                          "(off by default; see docs/preprocessing.md)")
    seg.add_argument("--out", required=True, help="output folder")
    seg.set_defaults(func=_cmd_segment)

    tr = sub.add_parser("track", help="compare two visits: new/enlarging/shrinking lesions")
    tr.add_argument("--baseline-flair", required=True, help="earlier FLAIR (NIfTI)")
    tr.add_argument("--followup-flair", required=True, help="later FLAIR (NIfTI)")
    tr.add_argument("--skull-stripped", action="store_true",
                    help="inputs are already brain-extracted: skip brain extraction")
    tr.add_argument("--method", choices=("joint", "difference", "network"), default="joint",
                    help="joint: masks and intensity change must agree (default); "
                         "difference: subtract two independent masks; network: the "
                         "change-detection network (models_onnx/lesion_change)")
    tr.add_argument("--harmonisation", choices=("white_matter", "histogram"),
                    default="white_matter",
                    help="network: each visit divided by its white-matter level (default), or "
                         "the baseline histogram-matched to the follow-up")
    tr.add_argument("--change-threshold", type=float, default=0.5,
                    help="network: change probability that counts as change (default 0.5)")
    tr.add_argument("--enlarging-pct", type=float, default=30.0,
                    help="volume increase (%%) that makes a lesion enlarging")
    tr.add_argument("--change-z", type=float, default=2.0,
                    help="intensity change (robust SDs) that confirms a change (joint)")
    tr.add_argument("--intensity-new-z", type=float, default=None,
                    help="joint: also report as new a spot that neither segmentation contains "
                         "when the FLAIR brightened by this many robust SDs (default 5, "
                         "docs/longitudinal.md; 0 turns it off)")
    tr.add_argument("--seg-method", choices=("network", "baseline"), default="network")
    tr.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold")
    tr.add_argument("--min-lesion-mm3", type=float, default=10.0)
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    tr.add_argument("--atrophy", action="store_true",
                    help="also measure PBVC and both visits' tissue volumes (provenance.json "
                         "'atrophy' block; T1w with --baseline-t1/--followup-t1, else the FLAIRs)")
    tr.add_argument("--baseline-t1", help="earlier T1w for --atrophy (NIfTI)")
    tr.add_argument("--followup-t1", help="later T1w for --atrophy (NIfTI)")
    tr.add_argument("--out", required=True, help="output folder")
    tr.set_defaults(func=_cmd_track)

    ev = sub.add_parser("evaluate", help="compare a lesion mask with a reference mask (JSON)")
    ev.add_argument("--pred", required=True, help="predicted mask (NIfTI; non-zero = lesion)")
    ev.add_argument("--truth", required=True, help="reference mask on the same grid")
    ev.add_argument("--min-lesion-mm3", type=float, default=10.0,
                    help="lesions under this size are left out of both masks for "
                         "lesion_any_voxel_min_size (default 10, as segment)")
    ev.set_defaults(func=_cmd_evaluate)

    tp = sub.add_parser("train-prognosis",
                        help="train, validate, calibrate and export a prognosis model from a "
                             "cohort CSV (docs/prognosis.md)")
    tp.add_argument("--cohort", required=True,
                    help="CSV: patient_id, the prognosis features, cdw_2y (0/1)")
    tp.add_argument("--out", required=True,
                    help="models folder to write (manifest.json + prognosis/); point the app "
                         "at it with MS_DASH_MODELS")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--test-fraction", type=float, default=0.25,
                    help="share of patients held out for the test metrics")
    tp.add_argument("--fast", action="store_true", help="small grids (quick check)")
    tp.set_defaults(func=_cmd_train_prognosis)

    rm = sub.add_parser("register-model",
                        help="check an ONNX segmentation network trained elsewhere against its "
                             "contract, run it once, and install it in a models folder "
                             "(docs/models.md)")
    rm.add_argument("--onnx", required=True, help="the network (ONNX)")
    rm.add_argument("--contract", required=True,
                    help="contract JSON: input channels and order, voxel size, orientation, "
                         "intensity normalisation, patch size and overlap, output")
    rm.add_argument("--out", required=True,
                    help="models folder to write (manifest.json + lesion_seg/); use it with "
                         "MS_DASH_MODELS=DIR")
    rm.set_defaults(func=_cmd_register_model)

    bt = sub.add_parser("batch", help="process a whole study (segment, track, atrophy, "
                                      "features), resumable; merged cohort table")
    bt.add_argument("study", help="study folder")
    bt.add_argument("--workers", type=int, default=2, help="parallel patients (default 2)")
    bt.add_argument("--threads", type=int, default=1, help="CPU threads per worker (default 1)")
    bt.add_argument("--backend", choices=("local", "ray"), default="local")
    bt.add_argument("--ray-address", help="existing Ray cluster (e.g. ray://head:10001 or auto); "
                                          "default: start a local one")
    bt.add_argument("--gpus-per-task", type=float, default=0.0,
                    help="Ray resource hint for GPU workers (e.g. 0.25)")
    bt.add_argument("--stages", default="segment,track,atrophy,features",
                    help="comma-separated subset of segment,track,atrophy,features")
    bt.add_argument("--participants", help="comma-separated participant ids (default: all)")
    bt.add_argument("--seg-method", choices=("network", "baseline"), default="network")
    bt.set_defaults(func=_cmd_batch)

    rep = sub.add_parser("report", help="one-patient report (HTML and PDF) with provenance")
    rep.add_argument("study", help="study folder")
    rep.add_argument("--participant", required=True, help="participant id, e.g. sub-01")
    rep.add_argument("--session", help="visit to report (default: the latest)")
    rep.add_argument("--models",
                     help="models folder (default: $MS_DASH_MODELS or the shipped one)")
    rep.add_argument("--out", help="output folder (default: STUDY/derivatives/ms_dash/SUB/report)")
    rep.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "study", None) is not None:  # MS_DASH_STUDY_ROOTS, when set
            from ms_core.foundation.settings import study_roots
            from ms_core.study.layout import confine_study

            confine_study(args.study, study_roots())
        return int(args.func(args))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
