"""How honest the study's time left is: the estimate at 25% and 50% of a run against the truth.

    python -m benchmarks.eta [--study digits] [-- extra search.run options]

Runs the README's main command (`python -m search.run --study digits`, its default budget) in a
fresh folder with `--no-progress`, so the once-a-minute log line ("... · study: about 12m30s
left") is what a user reads; every line is timestamped as it arrives. When the trials finish
(the line that prints the best trials table), the true time left at each earlier moment is
known. Reported: at the first log line after 25% and after 50% of the budget's trials had
finished, the estimate, the truth, and their ratio (goal: within 30%). The time left covers
the trials only; the baselines and the held-out report after them are timed apart.

Writes benchmarks/results/eta-<study>.{json,md} (or under $BENCH_OUT).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

LEFT = re.compile(r"study: about (?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)? left")
TRIAL_END = re.compile(r"^trial \d+: (complete|pruned|fail)")


def seconds_of(match: re.Match) -> int:
    h, m, s = (int(g) if g else 0 for g in match.groups())
    return 3600 * h + 60 * m + s


def main() -> None:
    from benchmarks._common import machine, machine_table, write_result

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="digits")
    p.add_argument("extra", nargs="*", help="more search.run options (after --)")
    args = p.parse_args()
    command = [sys.executable, "-m", "search.run", "--study", args.study, "--no-progress",
               *args.extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    lines: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as cwd:
        start = time.monotonic()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            lines.append((time.monotonic() - start, line.rstrip()))
            print(f"{lines[-1][0]:8.1f} {line}", end="", flush=True)
        code = proc.wait()
        total = time.monotonic() - start
    ends = [t for t, line in lines if TRIAL_END.match(line)]
    if code != 0 or not ends:
        raise SystemExit(f"the run exited with code {code} after {len(ends)} trial(s)")
    trials_done_at = ends[-1]
    budget = len(ends)
    points = []
    for fraction in (0.25, 0.5):
        after = ends[max(0, int(fraction * budget) - 1)]
        estimate = next(((t, seconds_of(m)) for t, line in lines
                         if t >= after and (m := LEFT.search(line))), None)
        if estimate is None:
            points.append({"fraction": fraction, "estimate_s": None})
            continue
        at, said = estimate
        truth = trials_done_at - at
        points.append({"fraction": fraction, "at_s": at, "estimate_s": said, "truth_s": truth,
                       "ratio": said / truth if truth > 0 else None})
    info = machine()
    result = {"command": " ".join(["python -m search.run --study", args.study, *args.extra]),
              "trials": budget, "trials_seconds": trials_done_at, "total_seconds": total,
              "points": points, "machine": info}
    rows = [f"| {int(pt['fraction'] * 100)}% | {pt['at_s'] / 60:.1f} min | "
            f"{pt['estimate_s'] / 60:.1f} min | {pt['truth_s'] / 60:.1f} min | "
            f"{pt['ratio']:.2f} |" if pt.get("estimate_s") is not None
            else f"| {int(pt['fraction'] * 100)}% | no estimate printed | | | |"
            for pt in points]
    md = "\n".join([
        f"# Time left on `{result['command']}`", "",
        f"{budget} trials in {trials_done_at / 60:.1f} min; the whole run (baselines, report) "
        f"{total / 60:.1f} min. Estimate: the first once-a-minute log line after that share of "
        f"the trials had finished; truth: the time the trials still took from that line.", "",
        "| after | at | estimate | truth | estimate / truth |", "| --- | --- | --- | --- | --- |",
        *rows, "", machine_table(info)]) + "\n"
    print(md)
    print(f"written: {write_result(f'eta-{args.study}', result, md)}")


if __name__ == "__main__":
    main()
