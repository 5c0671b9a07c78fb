"""Rollouts token by token: one question's K rollouts, every token coloured by the advantage
it is trained with, the tokens the loss ignores greyed out.

    python -m mgrpo_ref.viewer runs/mgrpo-s0 --step 30 --question 0 --out rollouts.html
    python -m mgrpo_ref.viewer runs/mgrpo-s0 --step 30     # the question pick_question picks

A training run records what this needs only for the steps it is asked to
(``record_steps=1,30,60``; nothing is recorded by default, so training is not slowed): each
learner writes ``records/step-NNNN-<learner>.json`` beside the run's metrics, holding every
trajectory of its halves of that step with its tokens, loss mask, reward, advantage, slot
count and its question's hop count (``learner_record``). Two arms train on something else
than what is drawn: a frozen sub-agent (``frozen_sub``) is never updated, so its colours are
the advantages it would have had; a one-step-stale sub-agent (``sub_staleness=1``) trains on
each step's half one step later, and not at all on the last step's. In a notebook, ``show(run_dir, step, question)`` returns
the same page as an HTML object. Without a question, both draw the one ``pick_question`` picks: a
question of two hops or more whose rollouts differ most, rather than question 0, which may be a
one-hop question whose K rollouts are all the same text.

How to read the page. Each rollout is one block: the main agent's trajectory, then each
sub-agent call of that rollout, indented. A token the agent generated has a background of
its trajectory's advantage on a diverging scale that colour-blind readers can read too: blue
when A > 0 (its probability is pushed up), orange when A < 0, white at A = 0, stronger the larger
|A| (full strength at |A| >= 2, clipped beyond). A legend at the top of the page shows the scale
with its ticks. Grey text with no background is a token the loss ignores (loss mask 0: the
question, tool observations, the other agent's results).
A sub trajectory that reached no slot (dropped by alignment) is drawn faded and struck out;
one that fills several slots says so ("x3"). Hovering a token shows its advantage and weight.
"""

from __future__ import annotations

import argparse
import html
import json
import statistics
from pathlib import Path

import torch

from .batching import encode_trajectory
from .cli import existing_dir, nonnegative_int, one_line, output_file

RECORDS = "records"
"""The folder of a run directory that holds the recorded steps."""
FULL_STRENGTH = 2.0
"""|A| at which a token's colour is at full strength; a larger |A| is drawn the same (clipped)."""
NEUTRAL = (255, 255, 255)
"""The colour of A = 0: white, the middle of the scale."""
POSITIVE = (70, 153, 199)
NEGATIVE = (219, 118, 37)
"""The colours of A >= +FULL_STRENGTH and A <= -FULL_STRENGTH: Okabe and Ito's colour-blind-safe
blue (#0072B2) and vermillion (#D55E00), each mixed with white to the same lightness (CIE L* 60),
so that black text stays readable on both and the same |A| looks equally strong either side."""


def record_path(run_dir: Path, step: int, learner: str) -> Path:
    return Path(run_dir) / RECORDS / f"step-{step:04d}-{learner}.json"


def learner_record(learner: str, step: int, trajectories: list[dict]) -> dict:
    """One learner's record of one step. Each trajectory is a dict with ``question_index``,
    ``rollout``, ``call`` (the sub-agent call's index, None for a main trajectory), ``qid``,
    ``hops`` (the question's hop count, what ``pick_question`` looks for), ``reward``,
    ``advantage``, ``copies`` (the slots it fills; 0 if dropped, 1 for a main trajectory),
    ``tokens`` (the text of each token) and ``loss_mask`` (0/1 per token)."""
    for i, t in enumerate(trajectories):
        if len(t["tokens"]) != len(t["loss_mask"]):
            raise ValueError(f"trajectory {i}: {len(t['tokens'])} tokens but {len(t['loss_mask'])} mask values")
    return {"learner": learner, "step": step, "trajectories": trajectories}


def half_trajectories(half, episodes: list, rollouts: int, policy) -> list[dict]:
    """The trajectories of one agent's half of a step (``step.MainHalf`` or ``step.SubHalf``), as
    ``learner_record`` takes them: a main half's B*K main trajectories, or a sub half's N sub
    trajectories, each encoded as training encodes it (``batching.encode_trajectory``), with
    its reward, its advantage, the slots it fills (1 for a main trajectory) and ``logp``, each
    token's log-probability under ``policy`` (0 for the first token), taken before the update:
    the policy that sampled it (diagnosis.py reads how much gradient each token carries)."""
    out = []
    for n, (i, call, trajectory, copies) in enumerate(half.trajectories(episodes)):
        ids, loss_mask = encode_trajectory(policy.render(trajectory), policy.encode)
        with torch.no_grad():
            row = torch.tensor([ids], device=policy.device)
            logp = policy.token_logprobs(row, torch.ones_like(row))[0]
        out.append({"question_index": i // rollouts, "rollout": i % rollouts, "call": call,
                    "qid": episodes[i].question.qid, "hops": episodes[i].question.n_hops,
                    "reward": half.rewards[n], "advantage": half.advantages[n].item(), "copies": copies,
                    "tokens": [policy.tokenizer.decode([t]) for t in ids], "loss_mask": loss_mask,
                    "logp": [round(x, 5) for x in logp.tolist()]})
    return out


def write_record(run_dir: Path, record: dict) -> Path:
    path = record_path(run_dir, record["step"], record["learner"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record) + "\n")
    return path


def read_records(run_dir: Path, step: int) -> list[dict]:
    """Every learner's record of ``step``; a clear error naming the recorded steps if there is none."""
    paths = sorted((Path(run_dir) / RECORDS).glob(f"step-{step:04d}-*.json"))
    if not paths:
        recorded = sorted({int(p.name[5:9]) for p in (Path(run_dir) / RECORDS).glob("step-*.json")})
        raise FileNotFoundError(f"{run_dir} has no record of step {step}; recorded steps: "
                                f"{recorded or 'none (train with record_steps=...)'}")
    records = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (ValueError, RecursionError) as err:
            raise ValueError(f"{path}: not a record ({one_line(err)})") from None
        problem = _record_problem(record)
        if problem:
            raise ValueError(f"{path}: not a record the viewer can draw ({problem})")
        records.append(record)
    return records


TRAJECTORY_KEYS = ("question_index", "rollout", "call", "qid", "reward", "advantage", "copies", "tokens", "loss_mask")


def _record_problem(record) -> str | None:
    """What keeps ``record`` from being drawn, or None."""
    if not isinstance(record, dict) or not isinstance(record.get("trajectories"), list):
        return "no list of trajectories"
    for i, t in enumerate(record["trajectories"]):
        missing = [key for key in TRAJECTORY_KEYS if not isinstance(t, dict) or key not in t]
        if missing:
            return f"trajectory {i} lacks {', '.join(missing)}"
        if not isinstance(t["tokens"], list) or not isinstance(t["loss_mask"], list) or len(t["tokens"]) != len(t["loss_mask"]):
            return f"trajectory {i} has tokens and a loss mask of different lengths"
    if "step" not in record:
        return "no step"
    return None


STYLE = {
    "page": "font-family: sans-serif; max-width: 70em",
    "title": "font-size: 1.2em; font-weight: bold; margin: 0.5em 0",
    "rollout": "font-size: 1em; margin: 1.2em 0 0.3em",
    "main": "margin: 0.3em 0",
    "sub": "margin: 0.3em 0 0.3em 2.5em",
    "dropped": "margin: 0.3em 0 0.3em 2.5em; opacity: 0.45; text-decoration: line-through",
    "head": "font-size: 0.8em; color: #555",
    "text": "font-family: monospace; line-height: 1.7; white-space: pre-wrap",
    "legend": "font-size: 0.8em; color: #333; margin: 0.5em 0 1em",
    "scale": "display: flex; align-items: flex-start; gap: 2em; margin-top: 0.4em",
    "bar": "width: 16em; margin: 0 1.5em",
    "ticks": "position: relative; height: 1.3em",
    "tick": "position: absolute; transform: translateX(-50%); white-space: nowrap",
}
"""Inline styles, so that the fragment looks the same in a notebook (whose HTML outputs may
drop a <style> element, and must not restyle the notebook around them) as in the file."""


def advantage_rgb(advantage: float) -> tuple[int, int, int]:
    """The scale: white mixed towards blue (A > 0) or orange (A < 0) in proportion to |A|,
    clipped at FULL_STRENGTH. A straight line in RGB, as a CSS gradient draws the legend's bar."""
    strength = min(abs(advantage) / FULL_STRENGTH, 1.0)
    end = POSITIVE if advantage > 0 else NEGATIVE
    return tuple(round(n + (e - n) * strength) for n, e in zip(NEUTRAL, end))


def colour(advantage: float, trained: bool) -> str:
    """The CSS style of one token: a background by the sign and size of its advantage, or grey
    text when the loss ignores it. Trained text is black, so that it stays readable on the light
    scale in a notebook with a dark theme."""
    if not trained:
        return "color:#9a9a9a"
    edge = "border-radius:2px;box-shadow:inset -1px 0 0 rgba(0,0,0,0.25)"  # where one token ends
    return f"background:rgb{advantage_rgb(advantage)};color:#000;{edge}"


def tick_label(advantage: float) -> str:
    """A tick of the legend: signed, and an end of the scale says it holds everything beyond it."""
    if advantage == 0:
        return "0"
    clipped = "&le; " if advantage <= -FULL_STRENGTH else ("&ge; " if advantage >= FULL_STRENGTH else "")
    return f"{clipped}{advantage:+g}"


def legend_html() -> str:
    """What the colours mean, drawn at the top of every page: a colour bar of the scale from
    -FULL_STRENGTH to +FULL_STRENGTH with five ticks, then how an untrained or dropped token looks."""
    ticks = [FULL_STRENGTH * k / 2 for k in (-2, -1, 0, 1, 2)]
    stops = ", ".join(f"rgb{advantage_rgb(a)} {25 * k}%" for k, a in enumerate(ticks))
    labels = "".join(f'<span class="tick" style="{STYLE["tick"]}; left: {25 * k}%">{tick_label(a)}</span>'
                     for k, a in enumerate(ticks))
    bar = (f'<div class="colour-bar" style="{STYLE["bar"]}">'
           f'<div style="height: 1em; border: 1px solid #999; background: linear-gradient(to right, {stops})"></div>'
           f'<div style="{STYLE["ticks"]}">{labels}</div></div>')
    ignored = (f'<div><span class="legend-sample" style="{colour(0.0, False)}">grey text</span>, no background: '
               'not trained (loss mask 0: the question, tool observations, the other agent\'s results).<br>'
               '<span style="text-decoration: line-through">struck out</span>: a sub trajectory that alignment '
               'dropped, not trained either.</div>')
    return (f'<div class="legend" style="{STYLE["legend"]}">Background: the advantage A the token was '
            f'trained with. Blue: A &gt; 0, its probability pushed up; orange: A &lt; 0, pushed down; white: '
            f'A = 0. The stronger the colour, the larger |A|, full strength at |A| &ge; {FULL_STRENGTH:g}. '
            f'Hover over a token for its numbers.<div style="{STYLE["scale"]}">{bar}{ignored}</div></div>')


def trajectory_html(t: dict) -> str:
    """One trajectory as a line of coloured token spans, after a header with its numbers."""
    spans = []
    for token, mask in zip(t["tokens"], t["loss_mask"]):
        trained = bool(mask) and t["copies"] > 0
        title = f"A = {t['advantage']:+.3f}, weight {mask * t['copies']}"
        text = html.escape(token).replace("\n", "<br>")
        spans.append(f'<span class="tok" style="{colour(t["advantage"], trained)}" title="{title}">{text}</span>')
    who = "main" if t["call"] is None else f"sub call {t['call'] + 1}"
    copies = "" if t["call"] is None else (" · dropped" if t["copies"] == 0 else f" · x{t['copies']}")
    header = (f'<div class="head" style="{STYLE["head"]}">{who} · R = {t["reward"]:.2f} · '
              f'A = {t["advantage"]:+.2f}{copies}</div>')
    kind = "main" if t["call"] is None else ("dropped" if t["copies"] == 0 else "sub")
    classes = {"main": "main", "sub": "sub", "dropped": "sub dropped"}[kind]
    return (f'<div class="traj {classes}" style="{STYLE[kind]}">{header}'
            f'<div class="text" style="{STYLE["text"]}">{"".join(spans)}</div></div>')


def question_trajectories(records: list[dict], question: int) -> list[dict]:
    """Every recorded trajectory of question ``question`` (its index in the step), both
    agents'; a ValueError naming the recorded questions if there is none."""
    found = [t for r in records for t in r["trajectories"] if t["question_index"] == question]
    if not found:
        n = len({t["question_index"] for r in records for t in r["trajectories"]})
        raise ValueError(f"no question {question} in this step's records (questions 0..{n - 1})")
    return found


def variety(mains: list[dict]) -> tuple[int, float]:
    """How much one question's rollouts differ, from their main trajectories: how many distinct
    transcripts they are, then the spread (standard deviation) of their rewards, which is what
    makes their advantages, and so their colours, differ."""
    return len({"".join(t["tokens"]) for t in mains}), statistics.pstdev(t["reward"] for t in mains)


def pick_question(records: list[dict], min_hops: int = 2) -> int:
    """The index in the step of the question most worth drawing: of the questions of at least
    ``min_hops`` hops whose rollouts differ, one whose rewards differ too (else every token of
    it is white: advantage 0), then the most ``variety`` (the lowest index on a tie). Question 0 may be a one-hop question whose K rollouts are all the same text, and so
    all the same colour: it shows neither the multi-hop delegation nor any contrast.

    Fallbacks, in order: when no multi-hop question's rollouts differ, the question whose
    rollouts differ most whatever its hops; when no question's rollouts differ, the first
    multi-hop question; failing that, the first question. A record written before trajectories
    carried their ``hops`` counts every question as of unknown hops, so only the fallbacks apply."""
    mains: dict[int, list[dict]] = {}
    for record in records:
        for t in record["trajectories"]:
            if t["call"] is None:
                mains.setdefault(t["question_index"], []).append(t)
    if not mains:
        raise ValueError("these records hold no main trajectory")

    def rank(question: int) -> tuple:
        distinct, spread = variety(mains[question])
        multi_hop = mains[question][0].get("hops", 0) >= min_hops
        return multi_hop and distinct > 1, spread > 0, distinct, spread, multi_hop

    return max(sorted(mains), key=rank)  # max keeps the first of equals: the lowest index


def question_fragment(records: list[dict], question: int) -> str:
    """The K rollouts of question ``question`` (its index in the step) as one self-contained
    <div>: every style inline, nothing that reaches outside it."""
    found = question_trajectories(records, question)
    step, qid = records[0]["step"], found[0]["qid"]
    hops = f", {found[0]['hops']} hop" + "s" * (found[0]["hops"] != 1) if "hops" in found[0] else ""
    blocks = []
    for rollout in sorted({t["rollout"] for t in found}):
        mine = sorted((t for t in found if t["rollout"] == rollout), key=lambda t: -1 if t["call"] is None else t["call"])
        blocks.append(f'<section><h2 style="{STYLE["rollout"]}">rollout {rollout}</h2>'
                      f'{"".join(trajectory_html(t) for t in mine)}</section>')
    return (f'<div class="mgrpo-viewer" style="{STYLE["page"]}">'
            f'<div style="{STYLE["title"]}">step {step} · question {question} ({html.escape(qid)}{hops}) · '
            f'{len(blocks)} rollouts</div>\n{legend_html()}\n{"".join(blocks)}</div>')


def question_html(records: list[dict], question: int) -> str:
    """A standalone HTML page holding ``question_fragment``."""
    fragment = question_fragment(records, question)
    step, qid = records[0]["step"], question_trajectories(records, question)[0]["qid"]
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>step {step}, question {question} ({html.escape(qid)})</title></head>
<body style="margin: 1.5em">
{fragment}
</body></html>
"""


def show(run_dir: Path, step: int, question: int | None = None):
    """One question's rollouts (``question_fragment``) as a notebook's HTML output; without a
    question, the one ``pick_question`` picks."""
    from IPython.display import HTML

    records = read_records(run_dir, step)
    return HTML(question_fragment(records, pick_question(records) if question is None else question))


def main(argv: list[str] | None = None) -> Path:
    """The CLI: write one question's page as a standalone HTML file. Bad input (no run, no
    record of the step, no such question) is one ``error:`` line and exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m mgrpo_ref.viewer", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=existing_dir)
    parser.add_argument("--step", type=nonnegative_int, required=True)
    parser.add_argument("--question", type=nonnegative_int, help="the question's index in the step (default: the one "
                        "pick_question picks, a multi-hop question whose rollouts differ most)")
    parser.add_argument("--out", type=output_file, help="the HTML file (default RUN_DIR/records/step-NNNN-qQ.html)")
    args = parser.parse_args(argv)
    try:
        records = read_records(args.run_dir, args.step)
        question = pick_question(records) if args.question is None else args.question
        page = question_html(records, question)
    except (OSError, ValueError) as err:
        parser.error(str(err).splitlines()[0])
    out = args.out or args.run_dir / RECORDS / f"step-{args.step:04d}-q{question}.html"
    try:
        out.write_text(page)
    except OSError as err:
        parser.error(f"cannot write {out}: {err.strerror or one_line(err)}")
    print(out)
    return out


if __name__ == "__main__":
    main()
