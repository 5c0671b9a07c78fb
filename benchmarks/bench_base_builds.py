"""Compare base builds: end-to-end accuracy (greedy and T = 1) and reading, one row per build.

    python benchmarks/bench_base_builds.py data/base runs/base-noise0.5 ... [--out FILE]

Each DIR is a base made by ``python -m mgrpo_ref.pretrain`` (its ``pretrain.json`` says how).
For each, on the held-out questions of ``--split`` (default: ``validation``, six worlds of both sizes):
base main + base sub and the base single agent, greedy and sampled at T = 1 (the same code
as ``python -m mgrpo_ref.evaluate``, 4-bit, seed 0), and the sub-agent's <visit> and <return>
turns after the oracle's context (``bench_reading.py``) on one default-size and one large
world of the same split; "visit long" is the share of three-digit document ids opened right. This is
the measurement behind ``PretrainConfig.demo_noise``, ``.demo_hasty`` and ``.large_worlds``.
Rows measured before the sixth session's worlds of two sizes are on ``--split eval`` and have
no "visit long".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_reading import oracle_sub_contexts, turn_accuracy  # noqa: E402

from mgrpo_ref.evaluate import evaluate, make_agent  # noqa: E402
from mgrpo_ref.policy import SamplingSettings  # noqa: E402
from mgrpo_ref.world import LARGE_SCALE, SPLITS, WORLD_SCALES, load_questions  # noqa: E402

def reading_worlds(split: str) -> tuple[int, ...]:
    """One world of each size in ``split`` for the reading turns: the reading is measured on
    the same split as the end-to-end accuracy, so a build chosen on ``validation`` never reads
    ``eval_worlds``."""
    seeds = SPLITS[split][0]
    default = [s for s in seeds if s not in WORLD_SCALES]
    large = [s for s in seeds if WORLD_SCALES.get(s) == LARGE_SCALE]
    return tuple(min(group) for group in (default, large) if group)


def measure(base: str, questions, subs: list[str], split: str) -> dict:
    built = json.loads((Path(base) / "pretrain.json").read_text())
    row = {"base": base, "split": split, "config": built["config"], "seconds": built["seconds"],
           "final_loss": round(built["final_loss"], 3)}
    long_ids = [c for c in subs if _visited_id(c) and len(_visited_id(c)) == 3]
    policy = make_agent(base)
    for temperature in (0.0, 1.0):
        key = "greedy" if temperature == 0 else "T1"
        policy.sampling = SamplingSettings(temperature=temperature)
        policy.generator.manual_seed(0)
        multi, _ = evaluate(questions, {"main": policy, "sub": policy}, "multi", batch_size=len(questions),
                            progress=False)
        policy.generator.manual_seed(0)
        single, _ = evaluate(questions, {"single": policy}, "single", batch_size=len(questions), progress=False)
        row[f"multi_{key}"] = multi
        row[f"single_{key}"] = single
        policy.generator.manual_seed(0)
        row[f"visit_{key}"] = turn_accuracy(policy, subs, "<visit>")
        row[f"return_{key}"] = turn_accuracy(policy, subs, "<return>")
        policy.generator.manual_seed(0)
        row[f"visit_long_{key}"] = turn_accuracy(policy, long_ids, "<visit>")
    return row


def _visited_id(context: str) -> str | None:
    """The document id the oracle opened in a sub-agent context."""
    start = context.rfind("<visit>")  # the last one, the turn turn_accuracy cuts before
    return context[start + len("<visit>"):context.index("</visit>", start)].strip() if start >= 0 else None


def table(rows: list[dict]) -> str:
    lines = ["| base | demo_noise | steps | main + sub greedy / T=1 | single greedy / T=1 | visit greedy / T=1 "
             "| visit long greedy / T=1 | return greedy / T=1 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = lambda key: f"{100 * r[key]['accuracy']:.1f}"  # noqa: E731
        share = lambda key: f"{100 * r[key]:.1f}"  # noqa: E731
        config = r["config"]
        noise = f"{config.get('demo_noise', 1.0):g}" + "".join(
            f", {kind} {config['demo_' + kind]:g}" for kind in ("misread", "hasty") if config.get("demo_" + kind))
        if config.get("large_worlds"):
            noise += f", large worlds {config['large_worlds']:g}"
        long_ = (f"{share('visit_long_greedy')} / {share('visit_long_T1')}" if "visit_long_T1" in r else "")
        lines.append(f"| {r['base']} | {noise} | {config['steps']} | {pct('multi_greedy')} / {pct('multi_T1')} "
                     f"| {pct('single_greedy')} / {pct('single_T1')} | {share('visit_greedy')} / {share('visit_T1')} "
                     f"| {long_} | {share('return_greedy')} / {share('return_T1')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bases", nargs="+", help="base model directories")
    parser.add_argument("--split", default="validation", choices=[s for s in SPLITS if s != "train"],
                        help="held-out split (default: validation, the split builds are chosen on)")
    parser.add_argument("--questions", type=int, default=None, help="the first N held-out questions (default: all)")
    parser.add_argument("--subs", type=int, default=150, help="oracle sub-tasks per reading world")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    questions = load_questions(args.split)[: args.questions]
    subs = [c for seed in reading_worlds(args.split) for c in oracle_sub_contexts(seed, args.subs)]
    rows = []
    for base in args.bases:
        rows.append(measure(base, questions, subs, args.split))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
