"""The evaluation harness: run agents on a split and report accuracy, as a function and a CLI.

    python -m mgrpo_ref.evaluate --main teacher --sub oracle [--split eval_worlds] [--limit N] [--out FILE]
    python -m mgrpo_ref.evaluate --single teacher

    python -m mgrpo_ref.evaluate --main data/base --sub data/base [--temperature 1]

An agent is a scripted one (``oracle``, ``teacher``) or a model directory: a base model
(for example ``data/base``, or any Hugging Face causal LM) or an adapter saved by a
policy. Models decode greedily unless ``--temperature`` is above 0. Accuracy is exact
match after normalisation (docs/paper.md section 2); the lenient score is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from .chat import few_shot
from .cli import existing_dir, nonnegative_float, nonnegative_int, one_line, output_file, positive_fraction, positive_int
from .config import DTYPES
from .episode import Agent, Episode, Limits, run_episodes, transcript
from .grading import normalize_answer
from .policy import REPO_ROOT, SamplingSettings, is_local_path, load_policy
from .rewards import verify_sub_result
from .scripted import ORACLE_NOISE, ScriptedAgent, TeacherNoise
from .tools import ToolsByWorld
from .world import DATA_DIR, Question, load_questions

SCRIPTED = ("oracle", "teacher")


def worked_examples(n: int) -> list:
    """``n`` worked conversations per role for a few-shot prompt (``chat.few_shot``): the
    oracle's main, sub and single trajectories on the first ``n`` two-hop training questions
    (never a held-out world)."""
    questions = [q for q in load_questions("train") if q.n_hops == 2][:n]
    oracle, tools = ScriptedAgent(ORACLE_NOISE, 0), ToolsByWorld()
    multi = run_episodes(questions, tools, {"main": oracle, "sub": oracle})
    single = run_episodes(questions, tools, {"single": oracle}, "single")
    return [e.main for e in multi] + [e.subs[0] for e in multi] + [e.main for e in single]


def make_agent(spec: str, noise: float = 1.0, seed: int = 0, sampling: SamplingSettings = SamplingSettings(),
               quantization: str = "nf4", shots: int = 0, dtype: str = "float32",
               prefix_cache_mib: float = 0) -> Agent:
    """An agent: ``oracle``, ``teacher`` (its noise times ``noise``), a model directory (also
    relative to the repository, like ``data/base``) or a hub name (``Qwen/Qwen2.5-0.5B-Instruct``).
    ``shots`` > 0 gives a model with a chat template a few-shot prompt of that many worked
    conversations per role (``worked_examples``). ``dtype`` and ``prefix_cache_mib`` go to
    ``policy.load_policy`` (a kept key-value cache changes the time, not the episodes).

    A ValueError for anything else: a local path with no model there (``data/nope``, ``./nope``;
    see ``policy.is_local_path``) at once, never tried on the hub; a model that cannot be loaded
    (a hub name neither cached nor reachable fails within seconds), in one line."""
    if shots and spec in SCRIPTED:
        raise ValueError(f"a few-shot prompt is for models, not the scripted {spec}")
    if spec == "oracle":
        return ScriptedAgent(ORACLE_NOISE, seed)
    if spec == "teacher":
        return ScriptedAgent(TeacherNoise().scaled(noise), seed)
    if not spec.strip():
        raise ValueError(f"an agent must be one of {SCRIPTED}, a model directory or a hub name, not an empty string")
    try:
        is_dir = Path(spec).expanduser().is_dir() or (REPO_ROOT / spec).is_dir()
    except RuntimeError:  # "~nosuchuser/model"
        raise ValueError(f"no model directory at {spec}: no such user") from None
    if not is_dir and is_local_path(spec):  # data/nope, ./nope, ~/nope: never a hub name
        raise ValueError(f"no model directory at {spec}")
    if is_dir or re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        try:
            policy = load_policy(spec, quantization=quantization, sampling=sampling, trainable=False, seed=seed,
                                 dtype=dtype, prefix_cache_mib=prefix_cache_mib)
        except OSError as err:  # not a model directory, or a hub name neither cached nor reachable
            raise ValueError(f"cannot load agent {spec!r}: {one_line(err)}") from err
        if shots:
            if policy.chat is None:
                raise ValueError(f"a few-shot prompt needs a model with a chat template; {spec} has none")
            policy.chat = few_shot(policy.chat, worked_examples(shots))
        return policy
    raise ValueError(f"unknown agent {spec!r}: expected one of {SCRIPTED}, a model directory or a hub name")


def summarize(episodes: list[Episode]) -> dict:
    """The report: accuracy, lenient accuracy, format validity, sub calls, accuracy by hops
    and by world (the held-out world's seed)."""
    n = len(episodes)
    if n == 0:
        raise ValueError("no episodes to summarize")
    by_hops: dict[int, list[bool]] = defaultdict(list)
    by_world: dict[int, list[bool]] = defaultdict(list)
    for e in episodes:
        by_hops[e.question.n_hops].append(e.correct)
        by_world[e.question.world_seed].append(e.correct)
    subs = [s for e in episodes for s in e.subs]
    errors: dict[str, int] = defaultdict(int)
    for t in [e.main for e in episodes] + subs:
        if not t.format_valid:
            errors[f"{t.role}/{t.error or t.outcome}"] += 1
    return {
        "n": n,
        "accuracy": sum(e.correct for e in episodes) / n,
        "lenient_accuracy": sum(e.lenient for e in episodes) / n,
        "format_valid": sum(e.main.format_valid for e in episodes) / n,
        "sub_format_valid": (sum(s.format_valid for s in subs) / len(subs)) if subs else None,
        "mean_sub_calls": len(subs) / n,
        "accuracy_by_hops": {h: sum(v) / len(v) for h, v in sorted(by_hops.items())},
        "n_by_hops": {h: len(v) for h, v in sorted(by_hops.items())},
        "accuracy_by_world": {w: sum(v) / len(v) for w, v in sorted(by_world.items())},
        "format_errors": dict(sorted(errors.items())),
    }


FAILURE_KINDS = ("correct", "main format", "off the gold chain", "past the last hop", "sub failed a gold hop",
                 "stopped early", "wrong final answer")


def failure_kind(episode: Episode) -> str:
    """Where a multi-agent episode went wrong: its first step off the gold chain, in call order.

    - ``correct``: nothing went wrong.
    - ``main format``: the main agent broke the protocol.
    - ``off the gold chain``: the main agent delegated a subtask that is no gold hop's
      sub-question (another relation, or a subject that an earlier wrong result led to)
      before the last hop was answered right.
    - ``past the last hop``: every hop was delegated and answered right, and then the main
      agent delegated one more subtask instead of answering (it overshot the chain).
    - ``sub failed a gold hop``: the main agent delegated a gold hop's sub-question and the
      sub-agent did not return that hop's answer (a wrong document, a wrong fact, a broken turn).
    - ``stopped early``: every delegation was a gold hop, answered right, but the main agent
      answered before delegating the last hop.
    - ``wrong final answer``: every hop was delegated and answered right, and the final answer
      is still wrong (not what the last sub-agent returned).
    """
    if episode.mode != "multi":
        raise ValueError("failure_kind reads a main agent's delegations: multi-agent episodes only")
    if episode.correct:
        return "correct"
    if not episode.main.format_valid:
        return "main format"
    gold = {normalize_answer(hop.question) for hop in episode.question.hops}
    last = normalize_answer(episode.question.hops[-1].question)
    reached_last = False
    for sub in episode.subs:
        asked = normalize_answer(sub.subtask)
        if asked not in gold:
            return "past the last hop" if reached_last else "off the gold chain"
        if not verify_sub_result(sub.subtask, sub.final, episode.question):
            return "sub failed a gold hop"
        reached_last = reached_last or asked == last
    return "wrong final answer" if reached_last else "stopped early"


def failure_counts(episodes: list[Episode]) -> dict[str, int]:
    """How many episodes of each ``FAILURE_KINDS`` (every kind listed, 0 where none)."""
    kinds = Counter(failure_kind(e) for e in episodes)
    return {kind: kinds.get(kind, 0) for kind in FAILURE_KINDS}


def calls_by_hops(episodes: list[Episode]) -> dict[str, dict[str, int]]:
    """How many subtasks the main agent delegated, for each gold chain length: hops -> calls ->
    episodes (JSON keys). An overshoot shows as more calls than hops, stopping early as fewer."""
    calls: dict[str, Counter] = {}
    for e in episodes:
        calls.setdefault(str(e.question.n_hops), Counter())[str(len(e.subs))] += 1
    return {h: dict(sorted(c.items(), key=lambda kv: int(kv[0]))) for h, c in sorted(calls.items(), key=lambda kv: int(kv[0]))}


def evaluate(questions: list[Question], agents: dict[str, Agent], mode: str = "multi",
             limits: Limits = Limits(), data_dir: Path = DATA_DIR,
             batch_size: int = 64, progress: bool = True,
             tools_for: ToolsByWorld | None = None) -> tuple[dict, list[Episode]]:
    """Run one episode per question; return (report, episodes). Pass ``tools_for`` to reuse
    worlds already loaded (the trainer evaluates many times)."""
    tools_for = tools_for or ToolsByWorld(data_dir)
    episodes: list[Episode] = []
    for start in tqdm(range(0, len(questions), batch_size), desc="evaluate", disable=not progress,
                      unit="batch"):
        episodes += run_episodes(questions[start:start + batch_size], tools_for, agents, mode, limits)
    return summarize(episodes), episodes


def format_report(report: dict) -> str:
    """A short plain-text table of a report."""
    def pct(x):
        return "  n/a" if x is None else f"{100 * x:5.1f}%"

    rows = [("accuracy (exact)", pct(report["accuracy"])),
            ("accuracy (lenient)", pct(report["lenient_accuracy"])),
            ("format valid (main/single)", pct(report["format_valid"])),
            ("format valid (sub)", pct(report["sub_format_valid"])),
            ("mean sub calls", f"{report['mean_sub_calls']:6.2f}")]
    rows += [(f"accuracy, {h} hop{'s' if h > 1 else ''} (n={report['n_by_hops'][h]})", pct(a))
             for h, a in report["accuracy_by_hops"].items()]
    if len(report.get("accuracy_by_world", {})) > 1:  # the spread across held-out worlds
        rows += [(f"accuracy, world {w}", pct(a)) for w, a in report["accuracy_by_world"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def agent_spec(text: str) -> str:
    """An agent on the command line: a scripted agent's name, a model directory or a hub name;
    never an empty string."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must be one of {SCRIPTED}, a model directory or a hub name, not an empty string")
    return text


def main(argv: list[str] | None = None) -> dict:
    """The CLI. Bad input (an option's value, a split, an agent that cannot be loaded) is one
    ``error:`` line and exit status 2, before anything is written."""
    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.evaluate", description=__doc__.split("\n")[0])
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--main", type=agent_spec, help=f"main agent: one of {SCRIPTED} or a model directory")
    who.add_argument("--single", type=agent_spec, help=f"single agent (does every hop itself): {SCRIPTED} or a model directory")
    parser.add_argument("--sub", type=agent_spec, help=f"sub-agent, with --main: one of {SCRIPTED} or a model directory")
    parser.add_argument("--split", default="eval_worlds",
                        help="question split, a file name in DATA_DIR/questions (default: eval_worlds)")
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N questions only")
    parser.add_argument("--noise", type=nonnegative_float, default=1.0, help="teacher noise factor (default 1.0)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the agents' randomness")
    parser.add_argument("--temperature", type=nonnegative_float, default=0.0, help="models: 0 = greedy (default)")
    parser.add_argument("--top-p", type=positive_fraction, default=1.0, help="models: nucleus sampling threshold, in (0, 1]")
    parser.add_argument("--max-new-tokens", type=positive_int, default=SamplingSettings.max_new_tokens)
    parser.add_argument("--quantization", choices=("nf4", "none"), default="nf4",
                        help="models: 4-bit NF4 base (default) or full precision")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="models at full precision: the base in float32 (default) or bfloat16")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="episodes run (and batched) together (default: 64)")
    parser.add_argument("--data-dir", type=existing_dir, default=DATA_DIR)
    parser.add_argument("--out", type=output_file, help="write the report as JSON here")
    parser.add_argument("--shots", type=nonnegative_int, default=0, metavar="N",
                        help="models with a chat template: a few-shot prompt of N worked conversations per role")
    parser.add_argument("--show", type=nonnegative_int, default=0, metavar="N", help="print N episode transcripts")
    args = parser.parse_args(argv)
    if args.main and not args.sub:
        parser.error("--main needs --sub")
    if args.single and args.sub:
        parser.error("--sub goes with --main, not with --single")
    sampling = SamplingSettings(args.temperature, args.top_p, args.max_new_tokens)

    def agent(spec: str, seed: int) -> Agent:
        return make_agent(spec, args.noise, seed, sampling, args.quantization, args.shots, args.dtype)

    try:  # the questions first: a bad split is refused before any model is loaded
        questions = load_questions(args.split, args.data_dir)[: args.limit]
        if not questions:
            raise ValueError(f"split {args.split!r} in {args.data_dir} has no questions")
        if args.main:
            main_agent = agent(args.main, args.seed)
            # One model playing both roles is loaded once.
            sub_agent = main_agent if args.sub == args.main and args.sub not in SCRIPTED else agent(args.sub, args.seed + 1)
            mode, agents = "multi", {"main": main_agent, "sub": sub_agent}
        else:
            mode, agents = "single", {"single": agent(args.single, args.seed)}
    except (ValueError, OSError) as err:
        parser.error(one_line(err))
    report, episodes = evaluate(questions, agents, mode, data_dir=args.data_dir, batch_size=args.batch_size)
    report.update(split=args.split, mode=mode, agents={r: getattr(args, r) for r in agents},
                  temperature=args.temperature, seed=args.seed, shots=args.shots)
    print(format_report(report))
    for episode in episodes[: args.show]:
        print("\n" + transcript(episode))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
