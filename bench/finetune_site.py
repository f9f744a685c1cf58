"""The real validation scans as a pretend site: fine-tune on two, validate on the third, all
three ways (issue 33's target: the fine-tuned model beats the shipped one on the held-out scan
in at least two of the three splits).

Usage::

    python bench/finetune_site.py [--steps 500] [--seed 0] [--lr 2e-4] [--synthetic-fraction 0.5]
        [--work DIR] [--name finetune_site]

Builds a study in ``--work`` (default: a temporary folder) whose three patients are patient26
of open_ms_data and P18 and P39 of MSLesSeg: one visit each, the skull-stripped FLAIR linked
from ``../shared`` (not copied), the expert mask in ``derivatives/manual_masks``. Then runs
``python -m training.seg.finetune --skull-stripped --val-participants X`` for each X and writes
``bench/results/NAME.json`` with the held-out scan's Dice, lesion F1 and volume before and
after. These three scans are the shipped models' validation set; the models this bench makes
are throwaway and never shipped.

Data: open_ms_data (Lesjak et al. 2018, Neuroinformatics 16:51-63; CC-BY) and MSLesSeg
(Guarnera et al. 2025; CC BY 4.0), see ../shared/data/mslesseg/README.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ms_core.foundation.io import atomic_write_text, write_json  # noqa: E402
from training.seg import finetune  # noqa: E402
from training.seg.report import available_real_scans  # noqa: E402

#: Participant ids of the pretend site, in the order of training.seg.report.REAL_SCANS.
PARTICIPANTS = {"patient26": "sub-p26", "P18": "sub-p18", "P39": "sub-p39"}
SESSION = "ses-01"


def build_site(root: Path) -> list[str]:
    """The pretend-site study in ``root``: participants, sessions, FLAIR links and masks.
    Returns its participant ids; raises ``SystemExit`` when ../shared lacks a scan."""
    scans = available_real_scans()
    if len(scans) != len(PARTICIPANTS):
        raise SystemExit("needs patient26, P18 and P39 in ../shared (see training.seg.report)")
    root.mkdir(parents=True, exist_ok=True)
    rows = ["participant_id\tsex\tbirth_year\tms_type\tonset_year"]
    for scan in scans:
        pid = PARTICIPANTS[scan.name]
        rows.append(f"{pid}\tn/a\tn/a\tn/a\tn/a")
        anat = root / pid / SESSION / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        flair = anat / f"{pid}_{SESSION}_FLAIR.nii.gz"
        if not flair.exists():
            flair.symlink_to(scan.flair.resolve())
        mask = finetune.mask_path(root / finetune.DEFAULT_MASKS, pid, SESSION)
        mask.parent.mkdir(parents=True, exist_ok=True)
        if not mask.exists():
            mask.symlink_to(scan.mask.resolve())
        atomic_write_text(root / pid / f"{pid}_sessions.tsv",
                          "session_id\tacq_date\tedss\trelapses_since_last\tdmt\tscanner\t"
                          f"field_strength_t\n{SESSION}\t2020-01-01\tn/a\tn/a\tn/a\t"
                          f"{scan.source}\tn/a\n")
    atomic_write_text(root / "participants.tsv", "\n".join(rows) + "\n")
    return [PARTICIPANTS[s.name] for s in scans]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic-fraction", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=2e-4, help="fine-tuning learning rate")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--name", default="finetune_site")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="finetune_site-"))
    study = work / "study"
    participants = build_site(study)
    splits = {}
    for held_out in participants:
        out = work / f"models_{held_out}"
        t0 = time.perf_counter()
        code = finetune.main(["--study", str(study), "--out", str(out), "--steps",
                              str(args.steps), "--seed", str(args.seed), "--skull-stripped",
                              "--synthetic-fraction", str(args.synthetic_fraction),
                              "--lr", str(args.lr),
                              "--val-participants", held_out])
        if code != 0:
            return code
        report = json.loads((out / "finetune_report.json").read_text())
        (key,) = report["after"]
        before, after = report["before"][key], report["after"][key]
        splits[held_out] = {"before": before, "after": after,
                            "better": after["dice"] > before["dice"],
                            "seconds": round(time.perf_counter() - t0, 1),
                            "train_seconds": report["train_seconds"]}
    wins = sum(s["better"] for s in splits.values())
    result = {"command": " ".join(["python bench/finetune_site.py", *(argv or sys.argv[1:])]),
              "splits": splits, "better_in": wins, "target_met": wins >= 2}
    write_json(REPO / "bench" / "results" / f"{args.name}.json", result)
    print(finetune.before_after_table(
        {k: v["before"] for k, v in splits.items()}, {k: v["after"] for k, v in splits.items()},
        label="held out", seconds={k: v["train_seconds"] for k, v in splits.items()}))
    print(f"fine-tuned better on {wins} of {len(splits)} held-out scans (target: 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
