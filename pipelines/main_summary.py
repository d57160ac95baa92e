"""The main job's summary (the last step of scripts/main.sh): held-out greedy pass@1 before training
and after each training seed, for humanline and, where CONTROL=1 ran it, plain GRPO on the same
stale groups.

For each run, the gain after - before carries two standard errors: ``gain_se`` treats the two
evaluations as independent (sqrt(se_before^2 + se_after^2)); ``gain_se_paired`` uses that both
scored the same problems (sd of the per-problem differences, ddof 1, / sqrt(problems)), which is
smaller when the same problems stay right. Writes ``RUN/results.json`` and ``RUN/results.md`` and
prints one line per run.

Usage: python pipelines/main_summary.py RUN SEED [SEED ...]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from humanline_data.store import open_version, read_manifest  # noqa: E402
from pipelines.common import write_results  # noqa: E402
from pipelines.replication_stats import paired  # noqa: E402

ARMS = (("humanline", "after"), ("control", "control"))  # (arm, eval file stem) as main.sh names them


def rewards_by_problem(result: dict) -> dict[str, float]:
    """prompt_id -> reward of one evaluation (its scored version; one greedy sample a problem)."""
    table = open_version(result["versions"]["scored"]).read(columns=["prompt_id", "reward"])
    return dict(zip(table.column("prompt_id").to_pylist(), table.column("reward").to_pylist()))


def summarize(run: Path, seeds: list[int]) -> list[dict]:
    """One dict per (seed, arm) evaluated under ``run``: before/after pass@1 with their standard
    errors, the gain (fraction of problems) with its unpaired and paired standard errors, gain / unpaired SE."""
    before = json.loads((run / "eval_before.json").read_text())
    groups = read_manifest(run / "data" / "groups" / "v1")
    rows = []
    for seed in seeds:
        suffix = "" if seed == 0 else f"-s{seed}"
        for arm, stem in ARMS:
            path = run / f"eval_{stem}{suffix}.json"
            if not path.exists():
                continue
            after = json.loads(path.read_text())
            gain, se = after["value"] - before["value"], math.hypot(before["se"], after["se"])
            within = paired(rewards_by_problem(after), rewards_by_problem(before))
            rows.append({"arm": arm, "seed": seed, "problems": after["count"], "groups": groups["rows"],
                         "before": before["value"], "before_se": before["se"], "after": after["value"],
                         "after_se": after["se"], "gain": gain, "gain_se": se, "gain_se_paired": within["se"],
                         "z": gain / se if se else None, "eval": str(path)})
    return rows


def line(row: dict) -> str:
    """The one-line report of a run (the main job's last lines)."""
    label = "after" if row["arm"] == "humanline" else "control (no humanline)"
    tag = "" if row["seed"] == 0 else f" (seed {row['seed']})"
    return (f"held-out pass@1 on {row['problems']} problems: before {row['before']:.3f} ± {row['before_se']:.3f}, "
            f"{label}{tag} {row['after']:.3f} ± {row['after_se']:.3f}, gain {row['gain']:+.3f} ± {row['gain_se']:.3f} "
            f"({'>' if row['gain'] > 2 * row['gain_se'] else 'not >'} 2 SE)")


def main(argv: list[str]) -> None:
    run, seeds = Path(argv[0]), [int(s) for s in argv[1:]] or [0]
    rows = summarize(run, seeds)
    table = [[r["arm"], r["seed"], f"{r['before']:.3f}", f"{r['after']:.3f}",
              f"{100 * r['gain']:+.1f} ± {100 * r['gain_se']:.1f}",
              "-" if r["gain_se_paired"] is None else f"{100 * r['gain_se_paired']:.1f}",
              "-" if r["z"] is None else f"{r['z']:.1f}"] for r in rows]
    write_results(run, {"runs": rows}, "Main job: held-out greedy pass@1",
                  ["arm", "seed", "before", "after", "gain ± SE (points)", "paired SE", "gain / SE"], table,
                  notes=f"{rows[0]['groups'] if rows else 0} stale GRPO groups; SE of the gain unpaired "
                        "(evaluations independent) and paired (same problems).")
    for row in rows:
        print(line(row))


if __name__ == "__main__":
    main(sys.argv[1:])
