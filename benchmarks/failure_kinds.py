"""Where each arm of the comparison fails, before and after training.

    python benchmarks/failure_kinds.py [RUNS_DIR] [--results RESULTS_JSON] [--out OUT_JSON]

RUNS_DIR holds the comparison's run directories (``<arm>-s<seed>``, default runs/compare-cpu-long).
For every finished multi-agent run (single-agent episodes have no delegations to follow), the
final adapters play the held-out questions of the run's ``eval_split`` greedily. Each failed
episode is named by where it first left the gold chain (``evaluate.failure_kind``: the main
agent's format, a subtask off the chain, a subtask past the last hop, a sub-agent that failed
a gold hop, an answer before the last hop, a wrong final answer), and the delegations are
counted for each gold chain length. The base plays once (every arm starts from the same base:
the runs' step 0). Counts go to ``--out`` as JSON, and the mean count per arm over its seeds
as a markdown table (``.md`` beside it); runs are read, never trained. A run already counted
in ``--out`` is kept as it is (a finished run's adapters never change), so a second call
plays only the runs finished since; ``--again`` plays them all.

A comparison records these counts itself, for every team it trains, from the greedy
evaluation its accuracy is reported from (the trainer logs ``eval/failure_kinds`` and
``eval/calls_by_hops``). With ``--results`` its results.json is read instead of playing:

    python benchmarks/failure_kinds.py runs/compare-cpu-long \
        --results benchmarks/results/comparison-cpu-long/results.json \
        --out benchmarks/results/comparison-cpu-long/failure_kinds.json

and only the runs it records without their counts (recorded before it kept them) are played
from RUNS_DIR; one whose run directory is gone is named and left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import ROOT, within_project  # noqa: E402

from mgrpo_ref import rundir  # noqa: E402
from mgrpo_ref.compare import greedy_episodes  # noqa: E402
from mgrpo_ref.config import TrainConfig  # noqa: E402
from mgrpo_ref.evaluate import FAILURE_KINDS, calls_by_hops, failure_counts  # noqa: E402
from mgrpo_ref.step import LAYOUTS  # noqa: E402
from mgrpo_ref.tools import ToolsByWorld  # noqa: E402
from mgrpo_ref.train import held_out_questions  # noqa: E402


def counts(episodes: list) -> dict:
    """Failure kinds, and how many subtasks the main agent delegated for each gold chain
    length ("calls_by_hops": hops -> calls -> questions; an overshoot shows as more calls
    than hops)."""
    return {**failure_counts(episodes), "calls_by_hops": calls_by_hops(episodes)}


def recorded_counts(path: Path) -> tuple[dict, dict | None, list[tuple[str, int]], str | None]:
    """From a comparison's results.json: (arm, seed) -> the counts it records for that run
    (those of the very greedy evaluation its accuracy is reported from), the base's, the
    teams it records without them (runs recorded before the comparison kept them), and the
    split they were evaluated on."""
    data = json.loads(path.read_text())
    teams = [r for r in data["runs"] if r["mode"] == "multi"]
    return ({(r["variant"], r["seed"]): r["failure_kinds"] for r in teams if "failure_kinds" in r},
            data.get("base_failure_kinds", {}).get("multi"),
            [(r["variant"], r["seed"]) for r in teams if "failure_kinds" not in r],
            teams[0]["config"]["eval_split"] if teams else None)


def finished_runs(runs_dir: Path) -> list[tuple[str, int, Path]]:
    """(arm, seed, run directory) of every run whose last checkpoint is its last step."""
    found = []
    for run in sorted(p for p in runs_dir.iterdir() if (p / rundir.CONFIG).exists()):
        arm, _, seed = run.name.rpartition("-s")
        cfg = TrainConfig.load(run / rundir.CONFIG)
        last = rundir.latest_checkpoint(run)
        if last is not None and rundir.checkpoint_step(last) >= cfg.steps and seed.isdigit():
            found.append((arm, int(seed), run))
    return found


def table(results: dict) -> str:
    kinds = list(FAILURE_KINDS)
    lines = ["| arm | runs | " + " | ".join(kinds) + " |", "|---" * (2 + len(kinds)) + "|"]
    for arm, by_seed in results["arms"].items():
        rows = list(by_seed.values())
        if not rows:  # no finished multi-agent run yet
            continue
        means = [statistics.fmean(r[k] for r in rows) for k in kinds]
        lines.append(f"| {arm} | {len(rows)} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="?", default=Path("runs/compare-cpu-long"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/comparison-cpu-long/failure_kinds.json"))
    parser.add_argument("--results", type=Path,
                        help="a comparison's results.json: the runs it records with their counts are taken from "
                             "it, and only those recorded without them are played from RUNS")
    parser.add_argument("--again", action="store_true",
                        help="play every run again; by default the runs already counted in --out are kept")
    args = parser.parse_args()
    tools_for = ToolsByWorld()
    results: dict = {"runs": within_project(args.runs), "arms": {"base": {}}}
    if args.out.exists() and not args.again:  # the runs counted before (their adapters are final)
        results = json.loads(args.out.read_text())
        if (ROOT / results.get("runs", "")).resolve() != args.runs.resolve():
            parser.error(f"{args.out} counts the runs of {results.get('runs')}, not {args.runs}: "
                         "choose another --out, or --again to count these instead")
    if args.results is not None:
        recorded, base, to_play, split = recorded_counts(args.results)
        results["results"], results["split"] = within_project(args.results), split
        for (arm, seed), after in recorded.items():
            results["arms"].setdefault(arm, {})[str(seed)] = after
        if base is not None:
            results["arms"]["base"]["-"] = base
            results["n"] = sum(base[k] for k in FAILURE_KINDS)
    finished = {(arm, seed): run for arm, seed, run in finished_runs(args.runs)} if args.runs.is_dir() else {}
    if args.results is not None:  # only the comparison's runs recorded without their counts
        for arm, seed in to_play:
            if (arm, seed) not in finished and str(seed) not in results["arms"].get(arm, {}):
                print(f"{arm} seed {seed}: recorded without its counts, and not finished in {args.runs}: not counted",
                      flush=True)
        finished = {key: run for key, run in finished.items() if key in to_play}
    for (arm, seed), run in finished.items():
        cfg = TrainConfig.load(run / rundir.CONFIG)
        if LAYOUTS[cfg.variant].mode != "multi" or str(seed) in results["arms"].get(arm, {}):
            continue
        questions = held_out_questions(cfg)
        results["split"] = cfg.eval_split
        if not results["arms"]["base"]:
            results["n"] = len(questions)
            results["arms"]["base"]["-"] = counts(greedy_episodes(cfg, None, questions, tools_for))
        after = counts(greedy_episodes(cfg, rundir.latest_checkpoint(run), questions, tools_for))
        results["arms"].setdefault(arm, {})[str(seed)] = after
        print(f"{arm} seed {seed}: " + ", ".join(f"{k} {after[k]}" for k in FAILURE_KINDS), flush=True)
        write(results, args.out)  # after every run: a pass that is stopped loses nothing it counted
    write(results, args.out)
    print(table(results))


if __name__ == "__main__":
    main()
