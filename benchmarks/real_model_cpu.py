"""SmolLM2-135M-Instruct on this CPU at full precision, from the model as it comes to a short
M-GRPO run: format validity and accuracy at each stage, time and peak memory.

    make smollm2                                          # once: models/SmolLM2-135M-Instruct
    python benchmarks/real_model_cpu.py                   # every stage not done yet (about 1 h on 2 cores)
    python benchmarks/real_model_cpu.py --stages zero_shot few_shot
    python benchmarks/real_model_cpu.py --summary          # summary.md again from the stages' JSON files

``--split validation`` evaluates on the validation split instead, for choosing a setting (a
warm-up's ``--sft-hasty``, say) without reading the reported split; ``--runs`` and ``--out``
then keep such a trial apart from the committed results.

Each stage runs in a process of its own (so its peak memory is its own) and writes
``benchmarks/results/real-model-cpu/<stage>.json`` when it finishes; a finished stage is
skipped, and the M-GRPO run resumes from its last checkpoint. Every evaluation is greedy, both
roles played by the same model, on the first ``--questions`` held-out questions of
``eval_worlds`` (they take the six worlds in turn).

    zero_shot   the model as it comes
    few_shot    with two worked conversations per role before each question (chat.few_shot)
    warm_up     after the supervised warm-up (sft.py; its run in runs/real-model-cpu/sft)
    signal      what an M-GRPO step could learn from, at the warm-up: K = --signal-rollouts rollouts
                at T = 1 of each of the first --signal-questions questions of the validation split;
                per hop count, how often a rollout is right and how many sub-agent calls it makes,
                and for each group size k <= K the share of groups of k rollouts whose rewards
                differ (a group of one reward has no advantage) and, on multi-hop questions, that
                hold a right answer (counted exactly over every k of the K rollouts)
    mgrpo       M-GRPO from the warm-up adapter (runs/real-model-cpu/mgrpo): accuracy before and
                after, seconds and peak memory per step; to train on, delete mgrpo.json and pass a larger --rl-steps
    merge       continue the warm-up adapter, or merge it into the base first: the loss on
                held-out teacher demonstrations of each way, at full precision and in NF4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from statistics import fmean

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import command_line, within_project  # noqa: E402

MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
STAGES = ("zero_shot", "few_shot", "warm_up", "signal", "mgrpo", "merge")


def held_out(args):
    from mgrpo_ref.world import load_questions

    return load_questions(args.split)[: args.questions]


def report_of(report: dict) -> dict:
    keys = ("n", "accuracy", "format_valid", "sub_format_valid", "mean_sub_calls", "accuracy_by_hops",
            "format_errors")
    return {k: report[k] for k in keys if k in report}


def evaluate_model(spec: str, args, shots: int = 0) -> dict:
    from mgrpo_ref.episode import transcript
    from mgrpo_ref.evaluate import evaluate, make_agent
    from mgrpo_ref.policy import SamplingSettings

    start = time.time()
    agent = make_agent(spec, sampling=SamplingSettings(0.0, 1.0, args.max_new_tokens), quantization="none",
                       shots=shots)
    report, episodes = evaluate(held_out(args), {"main": agent, "sub": agent}, progress=False)
    return {**report_of(report), "split": args.split, "seconds": round(time.time() - start, 1),
            "example": transcript(episodes[0])}


def zero_shot(args) -> dict:
    return evaluate_model(str(args.model), args)


def few_shot(args) -> dict:
    return {"shots": args.shots, **evaluate_model(str(args.model), args, shots=args.shots)}


def warm_up(args) -> dict:
    from mgrpo_ref.sft import SFTConfig, warm_up as run_warm_up

    cfg = SFTConfig(base=str(args.model), steps=args.sft_steps, batch_size=args.sft_batch, lr=args.sft_lr,
                    max_tokens=args.sft_max_tokens, demo_hasty=args.sft_hasty, eval_questions=0)
    summary = run_warm_up(cfg, args.runs / "sft", progress=True)
    return {"config": {**summary["config"], "base": within_project(summary["config"]["base"])},
            "final_loss": summary["final_loss"],
            "seconds_per_step": round(summary["train_seconds"] / cfg.steps, 2),
            "n_trajectories": summary["n_trajectories"],
            "held_out": evaluate_model(str(args.runs / "sft" / "adapter"), args)}


def shares_over_subgroups(rewards: list[float], correct: list[bool], k: int) -> tuple[float, float]:
    """Over every group of k of one question's rollouts (their rewards, and whether each answered
    right): the share whose rewards are not all one value, and the share that holds a right
    answer. Exact: a group of k is all one value v in C(n_v, k) of the C(K, k) ways, and holds
    no right answer in C(K - n_right, k) of them."""
    from math import comb

    groups = comb(len(rewards), k)
    same = sum(comb(rewards.count(v), k) for v in set(rewards))
    return 1 - same / groups, 1 - comb(len(rewards) - sum(correct), k) / groups


def signal(args) -> dict:
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.policy import SamplingSettings, load_policy
    from mgrpo_ref.rewards import rollout_main_reward
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.world import load_questions

    questions = load_questions("validation")[: args.signal_questions]
    policy = load_policy(args.signal_model or args.runs / "sft" / "adapter", quantization="none", trainable=False, device="cpu", seed=1,
                         sampling=SamplingSettings(1.0, 1.0, args.max_new_tokens), prefix_cache_mib=2048)
    start = time.time()
    episodes = run_episodes(questions, ToolsByWorld(), {"main": policy, "sub": policy}, rollouts=args.signal_rollouts)
    seconds = time.time() - start
    K = args.signal_rollouts
    by_question = [episodes[i * K:(i + 1) * K] for i in range(len(questions))]
    hops = sorted({q.n_hops for q in questions})
    per_hops = {}
    for h in hops:
        group = [e for q, es in zip(questions, by_question) if q.n_hops == h for e in es]
        calls = [len(e.subs) for e in group]
        per_hops[h] = {"questions": sum(q.n_hops == h for q in questions), "rollouts": len(group),
                       "accuracy": round(fmean(e.correct for e in group), 4),
                       "format_valid": round(fmean(e.main.format_valid for e in group), 4),
                       "mean_sub_calls": round(fmean(calls), 3),
                       "share_with_at_least_hops_calls": round(fmean(c >= h for c in calls), 4),
                       "calls": {c: calls.count(c) for c in sorted(set(calls))},
                       "right_by_calls": {c: sum(e.correct for e in group if len(e.subs) == c) for c in sorted(set(calls))}}
    groups = {}
    for k in range(2, K + 1):
        shares = [shares_over_subgroups([rollout_main_reward(e) for e in es], [e.correct for e in es], k)
                  for es in by_question]
        multi = [s for q, s in zip(questions, shares) if q.n_hops >= 2]
        groups[k] = {"share_of_groups_with_differing_rewards": round(fmean(s[0] for s in shares), 4),
                     "multi_hop_share_of_groups_with_a_right_answer": round(fmean(s[1] for s in multi), 4) if multi else None}
    return {"model": within_project(args.signal_model or args.runs / "sft" / "adapter"),
            "questions": len(questions), "rollouts": K, "temperature": 1.0, "split": "validation",
            "seconds": round(seconds, 1), "by_hops": per_hops, "by_group_size": groups}


def mgrpo(args) -> dict:
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.rundir import read_jsonl
    from mgrpo_ref.train import Trainer

    cfg = TrainConfig(base=str(args.runs / "sft" / "adapter"), quantization="none", steps=args.rl_steps,
                      questions_per_step=args.rl_questions, rollouts=args.rl_rollouts,
                      max_new_tokens=args.max_new_tokens, eval_questions=args.questions, eval_every=5,
                      eval_sampled_temperature=0.0, checkpoint_every=1, lr=args.rl_lr)
    run = args.runs / "mgrpo"
    if (run / "config.json").exists() and replace(TrainConfig.load(run / "config.json"), steps=cfg.steps) != cfg:
        sys.exit(f"error: {run} holds a run with other settings; remove it to train these")  # more steps is fine
    with Trainer(cfg, run, progress=True, resume=(run / "config.json").exists()) as trainer:
        trainer.run()
    metrics = read_jsonl(run / "metrics.jsonl")
    steps = [m for m in metrics if m["step"] >= 1 and "time/step_s" in m]
    evals = [m for m in metrics if "eval/accuracy" in m]
    return {"config": {k: getattr(cfg, k) for k in ("steps", "questions_per_step", "rollouts", "lr", "max_new_tokens",
                                                    "eval_questions")},
            "held_out_before": {k[5:]: v for k, v in evals[0].items() if k.startswith("eval/")},
            "held_out_after": {k[5:]: v for k, v in evals[-1].items() if k.startswith("eval/")},
            "seconds_per_step": [round(m["time/step_s"], 1) for m in steps],
            "peak_mib": {learner: max(m.get(f"memory/{learner}_host_peak_mib", 0) for m in steps) for learner in ("main", "sub")},
            "reward_mean": {agent: [m.get(f"{agent}/reward_mean") for m in steps] for agent in ("main", "sub")},
            "rollout_sub_calls": [m.get("rollout/mean_sub_calls") for m in steps],
            "equal_reward_frac": {agent: [m.get(f"{agent}/equal_reward_frac") for m in steps] for agent in ("main", "sub")},
            "held_out_curve": {m["step"]: m["eval/accuracy"] for m in evals}}


def merge(args) -> dict:
    """Teacher-forced loss on the agent's tokens of held-out demonstrations (the noisy teacher on
    held-out questions) under four models: the warm-up adapter on the base (continue), and the
    warm-up merged into the base (merge), each at full precision and in NF4."""
    import torch

    from mgrpo_ref.batching import collate, encode_trajectory
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.policy import load_policy
    from mgrpo_ref.pretrain import masked_nll
    from mgrpo_ref.scripted import ScriptedAgent, TeacherNoise
    from mgrpo_ref.sft import merge_warm_up
    from mgrpo_ref.tools import ToolsByWorld

    teacher = ScriptedAgent(TeacherNoise(), seed=1)
    episodes = run_episodes(held_out(args)[:40], ToolsByWorld(), {"main": teacher, "sub": teacher})
    trajectories = [t for e in episodes for t in [e.main, *e.subs]]
    merged = merge_warm_up(args.runs / "sft" / "adapter", args.runs / "sft-merged")
    losses = {}
    for way, path in (("continue", args.runs / "sft" / "adapter"), ("merge", merged)):
        for quantization in ("none", "nf4"):
            policy = load_policy(path, quantization=quantization, trainable=False, device="cpu")
            data = [encode_trajectory(policy.render(t), policy.encode) for t in trajectories]
            total = weight = 0.0
            with torch.no_grad():
                for start in range(0, len(data), 8):
                    batch = collate(data[start:start + 8], policy.pad_id)
                    n = float(batch["loss_mask"][:, 1:].sum())
                    total += masked_nll(policy.model, batch, context_weight=0.0).item() * n
                    weight += n
            losses[f"{way}/{quantization}"] = round(total / weight, 5)
    return {"n_trajectories": len(trajectories), "loss": losses}


def run_stage(stage: str, args) -> dict:
    from mgrpo_ref.worker import peak_memory_mib

    start = time.time()
    result = globals()[stage](args)  # the mgrpo stage reports its workers' peaks; the others, this process's
    # wall_s: this invocation only (a resumed M-GRPO stage counts the steps it ran itself)
    return {"stage": stage, **result, "wall_s": round(time.time() - start, 1),
            "peak_mib": result.get("peak_mib", round(peak_memory_mib()["host_peak_mib"]))}


def percent(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def summary(out: Path) -> str:
    """Markdown tables from the stages' JSON files in out (the stages not run yet are left out):
    held-out figures per stage, time and peak memory, and the merge comparison."""
    found = {stage: json.loads((out / f"{stage}.json").read_text()) for stage in STAGES if (out / f"{stage}.json").exists()}
    rows = []  # (model, report, n, seconds per step, peak MiB)
    for stage, name in (("zero_shot", "as it comes"), ("few_shot", f"{found.get('few_shot', {}).get('shots')}-shot prompt")):
        if stage in found:
            rows.append((name, found[stage], found[stage]["n"], "", found[stage]["peak_mib"]))
    if "warm_up" in found:
        w = found["warm_up"]
        rows.append((f"after the warm-up ({w['config']['steps']} steps of {w['config']['batch_size']})", w["held_out"],
                     w["held_out"]["n"], f"{w['seconds_per_step']:.2f}", w["peak_mib"]))
    m = found.get("mgrpo")
    if m:
        steps = m["seconds_per_step"]
        rows.append((f"after M-GRPO ({len(steps)} steps of {m['config']['questions_per_step']} x {m['config']['rollouts']})",
                     m["held_out_after"], m["config"]["eval_questions"], f"{fmean(steps):.1f}",
                     round(max(m["peak_mib"].values()))))
    lines = ["| model | n | main format valid | sub format valid | accuracy | sub-agent calls per question | s per training step | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r, n, seconds, peak in rows:
        lines.append(f"| {name} | {n} | {percent(r.get('format_valid'))} | {percent(r.get('sub_format_valid')) or 'no call'} | "
                     f"{percent(r.get('accuracy'))} | {r.get('mean_sub_calls', 0):.2f} | {seconds} | {peak} |")
    text = "\n".join(lines) + "\n"
    calls = (m or {}).get("rollout_sub_calls") or []
    k = min(5, len(calls) // 2)  # two windows of k steps: the first and the last
    if k >= 1 and None not in calls and "equal_reward_frac" in m:  # older runs lack it
        main, sub, flat = m["reward_mean"]["main"], m["reward_mean"]["sub"], m["equal_reward_frac"]["main"]
        text += ("\n| M-GRPO's training rollouts (T = 1), over | sub-agent calls per rollout | main agent's reward | "
                 "sub-agent's reward | steps where every main-agent group had one reward |\n|---|---|---|---|---|\n")
        for name, window in ((f"steps 1-{k}", slice(0, k)), (f"steps {len(calls) - k + 1}-{len(calls)}", slice(-k, None))):
            text += (f"| {name} | {fmean(calls[window]):.2f} | {fmean(main[window]):.2f} | {fmean(sub[window]):.2f} | "
                     f"{sum(f == 1.0 for f in flat[window])} of {k} |\n")
        text += f"| all {len(calls)} steps |  |  |  | {sum(f == 1.0 for f in flat)} of {len(calls)} |\n"
    if "signal" in found:
        text += signal_tables(found["signal"])
    if (out / "trials").is_dir():
        text += trial_tables(out / "trials", found)
    if "merge" in found:
        loss = found["merge"]["loss"]
        text += ("\n| warm-up as | loss, full precision | loss, NF4 |\n|---|---|---|\n"
                 + "".join(f"| {way} | {loss[way + '/none']:.4f} | {loss[way + '/nf4']:.4f} |\n" for way in ("continue", "merge")))
    return text


def signal_tables(sig: dict) -> str:
    """The signal stage as two tables: by hop count, and by group size."""
    text = ("\n| hops | questions | rollouts | right | format valid | sub-agent calls per rollout | "
            "rollouts with a call per hop or more | right answers among rollouts of 1 call / of more |"
            "\n|---|---|---|---|---|---|---|---|\n")
    for hops, r in sig["by_hops"].items():
        right = r.get("right_by_calls")
        split = "" if right is None else (
            f"{right.get('1', 0)} of {r['calls'].get('1', 0)} / "
            f"{sum(v for c, v in right.items() if c != '1')} of {sum(v for c, v in r['calls'].items() if c != '1')}")
        text += (f"| {hops} | {r['questions']} | {r['rollouts']} | {percent(r['accuracy'])} | {percent(r['format_valid'])} | "
                 f"{r['mean_sub_calls']:.2f} | {percent(r['share_with_at_least_hops_calls'])} | {split} |\n")
    text += ("\n| group size k | groups of k rollouts whose rewards differ | multi-hop groups of k that hold a right answer |"
             "\n|---|---|---|\n")
    for k, g in sig["by_group_size"].items():
        text += (f"| {k} | {percent(g['share_of_groups_with_differing_rewards'])} | "
                 f"{percent(g['multi_hop_share_of_groups_with_a_right_answer'])} |\n")
    return text


def warm_up_row(name: str, w: dict | None, sig: dict) -> str:
    """One warm-up as a row: its teacher and length, greedy accuracy where it was evaluated on
    the validation split, and its signal stage's figures for two-hop questions."""
    two, groups = sig["by_hops"]["2"], sig["by_group_size"][str(sig["rollouts"])]
    if w is None:
        return (f"| {name} |  |  |  | {percent(two['share_with_at_least_hops_calls'])} | {percent(two['accuracy'])} | "
                f"{percent(groups['multi_hop_share_of_groups_with_a_right_answer'])} |")
    greedy = percent(w["held_out"]["accuracy"]) if w["held_out"].get("split") == "validation" else ""
    return (f"| {name} | {w['config'].get('demo_hasty', 0.6)} | {w['config']['steps']} x {w['config']['batch_size']} | "
            f"{greedy} | {percent(two['share_with_at_least_hops_calls'])} | {percent(two['accuracy'])} | "
            f"{percent(groups['multi_hop_share_of_groups_with_a_right_answer'])} |")


def trial_tables(trials: Path, found: dict) -> str:
    """The trials kept under ``trials/`` (each a folder), every one on the validation split: a
    warm-up trial keeps its stages' JSON files (warm_up.json, signal.json), an M-GRPO trial
    its run's config.json and metrics.jsonl. The committed warm-up heads the warm-up table
    (``found``: the stages above; its greedy accuracy is on eval_worlds, so not shown)."""
    from mgrpo_ref.rundir import read_jsonl

    warm, rl = [], []
    starts = {"runs/real-model-cpu/sft/adapter": "the warm-up above",  # an adapter -> the warm-up that made it
              "runs/real-study/warm-up/adapter": "the study's warm-up (warm-up-600-steps' settings)"}
    for folder in trials.iterdir():
        if (folder / "warm_up.json").exists() and (folder / "signal.json").exists():
            model = json.loads((folder / "signal.json").read_text()).get("model")  # older stages did not record it
            starts[model] = starts.get(model, folder.name)
    if "warm_up" in found and "signal" in found:
        warm.append(warm_up_row("the warm-up above", found["warm_up"], found["signal"]))
    for folder in sorted(p for p in trials.iterdir() if p.is_dir()):
        if (folder / "warm_up.json").exists():
            w, sig = (json.loads((folder / f"{n}.json").read_text()) for n in ("warm_up", "signal"))
            warm.append(warm_up_row(folder.name, w, sig))
        elif (folder / "signal.json").exists():  # a model with no warm-up of ours, for reference
            sig = json.loads((folder / "signal.json").read_text())
            warm.append(warm_up_row(f"{folder.name} ({sig['model']})", None, sig))
        if (folder / "metrics.jsonl").exists():
            cfg = json.loads((folder / "config.json").read_text())
            lines = read_jsonl(folder / "metrics.jsonl")
            evals = [m for m in lines if "eval/accuracy" in m]
            steps = [m for m in lines if "time/step_s" in m]
            flat = sum(m["main/equal_reward_frac"] == 1.0 for m in steps)
            start = starts.get(cfg["base"], cfg["base"])
            by_hops = evals[-1]["eval/accuracy_by_hops"]
            hops = str(cfg["min_train_hops"])
            if cfg.get("min_train_hops_steps"):  # a curriculum (TrainConfig.min_train_hops_steps)
                hops += f" to step {cfg['min_train_hops_steps']}, then 1"
            rl.append(f"| {folder.name} | {start} | {cfg['questions_per_step']} x {cfg['rollouts']} | {cfg['lr']:g} | "
                      f"{hops} | {len(steps)} | {steps[0]['rollout/mean_sub_calls']:.2f} -> "
                      f"{steps[-1]['rollout/mean_sub_calls']:.2f} | {flat} of {len(steps)} | "
                      + ", ".join(f"{percent(m['eval/accuracy'])} (step {m['step']})" for m in evals) + " | "
                      + " / ".join(percent(by_hops[h]) for h in sorted(by_hops, key=int)) + " |")
    text = ""
    if warm:
        text += ("\n| warm-up trial | demo_hasty | steps x batch | greedy accuracy, 60 validation questions | "
                 "two-hop rollouts at T = 1 that go on | two-hop rollouts right | multi-hop groups of 8 with a right answer |"
                 "\n|---|---|---|---|---|---|---|\n" + "\n".join(warm) + "\n")
    if rl:
        text += ("\n| M-GRPO trial | from | B x K | lr | min_train_hops | steps run | sub-agent calls per rollout, first -> last "
                 "step | steps where every main-agent group had one reward | greedy accuracy, 60 validation questions | "
                 "the last one by hops, 1 / 2 / 3 / 4 |"
                 "\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rl) + "\n")
    return text


def write_summary(out: Path) -> Path:
    path = out / "summary.md"
    path.write_text(summary(out))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--model", type=Path, default=MODEL, help="the instruct model's directory")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "real-model-cpu", help="its runs (warm-up, M-GRPO)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real-model-cpu",
                        help="one JSON per stage")
    parser.add_argument("--questions", type=int, default=60, help="held-out questions per evaluation")
    parser.add_argument("--split", default="eval_worlds", choices=("eval_worlds", "validation"),
                        help="the held-out split of the evaluations: validation while choosing")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--sft-batch", type=int, default=4)
    parser.add_argument("--sft-lr", type=float, default=5e-4)
    parser.add_argument("--sft-max-tokens", type=int, default=512)
    parser.add_argument("--sft-hasty", type=float, default=0.6, help="the demonstrating planner's haste (SFTConfig.demo_hasty)")
    parser.add_argument("--signal-questions", type=int, default=24)
    parser.add_argument("--signal-rollouts", type=int, default=8)
    parser.add_argument("--signal-model", type=Path, default=None,
                        help="the signal stage's model (default: the warm-up adapter in --runs)")
    parser.add_argument("--rl-steps", type=int, default=30)
    parser.add_argument("--rl-questions", type=int, default=4)
    parser.add_argument("--rl-rollouts", type=int, default=4)
    parser.add_argument("--rl-lr", type=float, default=1e-4)
    parser.add_argument("--summary", action="store_true", help="only write summary.md from the stages already run")
    parser.add_argument("--one", choices=STAGES, help=argparse.SUPPRESS)  # run one stage in this process
    args = parser.parse_args()
    if args.summary:
        print(write_summary(args.out).read_text(), end="")
        return
    if args.one:
        result = run_stage(args.one, args)
        result["command"] = command_line("benchmarks/real_model_cpu.py",
                                         [a for a in sys.argv[1:] if not a.startswith("--one") and a != args.one])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.one}.json").write_text(json.dumps(result, indent=1) + "\n")
        return
    if not (args.model / "config.json").exists():
        sys.exit(f"error: no model at {args.model}; run `make smollm2` first")
    for stage in args.stages:
        if (args.out / f"{stage}.json").exists():
            print(f"{stage}: done ({args.out / f'{stage}.json'})")
            continue
        print(f"{stage}: running", flush=True)
        settings = [f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items()
                    if key not in ("stages", "one", "summary")]
        proc = subprocess.run([sys.executable, __file__, *settings, "--one", stage])
        if proc.returncode:
            sys.exit(f"error: stage {stage} failed (exit status {proc.returncode})")
        result = json.loads((args.out / f"{stage}.json").read_text())
        print(f"{stage}: {json.dumps({k: v for k, v in result.items() if k != 'example'})[:600]}")
    print(f"summary: {write_summary(args.out)}")


if __name__ == "__main__":
    main()
