"""Two levers of the decode loop, each on and off: a key-value cache with room, and rows that
stopped leaving the batch.

    python benchmarks/bench_decode_cache.py [--lever room] [--base models/SmolLM2-135M-Instruct]
                                            [--repeats 3] [--rows 8 16] [--context 400 800] [--new-tokens 48]
    python benchmarks/bench_decode_cache.py --lever leave --rows 64 --context 400 --repeats 2

``--lever room`` (the default): transformers' own cache (``DynamicLayer``) concatenates each
pass's new keys and values onto what it holds, so every decode pass copies every layer's whole
cache once more: at a real model's context lengths that copy is a large part of a pass (a
profile of SmolLM2 at 8 rows and 800 tokens of context put about a third of the decode time in
``aten::cat``). ``prefix_cache.with_room`` hands the decode loop a cache whose tensors already
have room for the turn's tokens, which it writes in place. Every row writes exactly
``--new-tokens`` tokens (no stop), so the work is equal; "off" swaps ``with_room`` for the
concatenating cache.

``--lever leave``: rows stop after different numbers of tokens (row i after a length drawn
uniformly from 1 to ``--new-tokens``, seeded), as the turns of a real call do, and the call
goes on until the longest is written. "on" lets the stopped rows leave the batch
(``prefix_cache.let_go``: once they are half the rows it holds); "off" keeps feeding them
padding to the end, as transformers' ``generate`` does.

Both arms run ``prefix_cache.generate`` on the same contexts (random token ids, an empty
prefix cache, greedy), alternating, and must write the same tokens. Per shape: the median
seconds of a call in each arm over ``--repeats`` and their ratio.

Prints a table and writes benchmarks/results/real-model-cpu/decode_cache.json for ``room``,
decode_leave.json for ``leave`` (docs/real-model.md section 6 shows them: ``table``).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

from common import ROOT, command_line, machine, parser, within_project, write_result


def concatenating(cache, room, rows=None):
    """``with_room`` switched off: the model's own cache, only its rows taken."""
    from mgrpo_ref.prefix_cache import select_rows

    return cache if rows is None else select_rows(cache, rows)


def never(stopped) -> bool:
    """``let_go`` switched off: stopped rows stay in the batch to the end of the call."""
    return False


ARMS = {"room": {"on": {}, "off": {"with_room": concatenating}},
        "leave": {"on": {}, "off": {"let_go": never}}}
"""lever -> arm -> the functions of prefix_cache the arm replaces."""


def one_call(model, contexts, new_tokens, pad_id, stop_after=None):
    """One ``prefix_cache.generate`` call on ``contexts``, row i stopping after ``stop_after[i]``
    tokens (None: no stop): (seconds, seconds of its first pass, the turns written). The first
    pass encodes the contexts, which neither lever changes; the passes after it decode."""
    import torch

    from mgrpo_ref import prefix_cache
    from mgrpo_ref.prefix_cache import PrefixCache, generate

    passes, one_pass = [], prefix_cache.forward

    def timed(*args):
        start = time.perf_counter()
        out = one_pass(*args)
        passes.append(time.perf_counter() - start)
        return out

    def stopped(written, t):
        if stop_after is None:
            return torch.zeros(written.shape[0], dtype=torch.bool)
        return stop_after <= t + 1

    start = time.perf_counter()
    with mock.patch.object(prefix_cache, "forward", timed), torch.no_grad():
        turns = generate(model, PrefixCache(64), contexts, lambda logits: logits.argmax(-1), stopped, new_tokens, pad_id)
    return time.perf_counter() - start, passes[0], turns


HEADERS = {"room": ("concatenating", "with room"), "leave": ("stopped rows stay", "stopped rows leave")}
"""lever -> the names of its arms off and on, in the table."""


def table(result: dict) -> str:
    """Markdown: per shape, each arm's median seconds per call and their ratio."""
    off, on = HEADERS[result.get("lever", "room")]
    decode = all("decode_median_s" in s for s in result["shapes"])  # not in older runs
    lines = [f"| rows x context tokens | {off} (s) | {on} (s) | {on} / {off} |"
             + (" of which decoding, off / on (s) | decoding, on / off |" if decode else ""),
             "|---|---|---|---|" + ("---|---|" if decode else "")]
    for s in result["shapes"]:
        lines.append(f"| {s['rows']} x {s['context_tokens']} | {s['median_s']['off']:.1f} | {s['median_s']['on']:.1f} "
                     f"| x{s['ratio_on_over_off']:.2f} |"
                     + (f" {s['decode_median_s']['off']:.1f} / {s['decode_median_s']['on']:.1f} "
                        f"| x{s['decode_ratio_on_over_off']:.2f} |" if decode else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    options = parser("real-model-cpu/decode_cache", __doc__, repeats=3, base=False)
    options.add_argument("--base", default=str(ROOT / "models" / "SmolLM2-135M-Instruct"),
                         help="the model (default: models/SmolLM2-135M-Instruct; `make smollm2` makes it)")
    options.add_argument("--rows", type=int, nargs="+", default=[8, 16], help="contexts per call")
    options.add_argument("--context", type=int, nargs="+", default=[400, 800], help="tokens per context")
    options.add_argument("--new-tokens", type=int, default=48)
    options.add_argument("--lever", choices=list(ARMS), default="room",
                         help="room: a cache with room against a concatenating one; leave: stopped rows leaving the batch")
    args = options.parse_args(argv)
    if args.lever == "leave" and args.out == options.get_default("out"):
        args.out = args.out.with_name("decode_leave.json")

    import torch

    from mgrpo_ref import prefix_cache
    from mgrpo_ref.policy import load_policy

    if not Path(args.base).exists():
        sys.exit(f"bench_decode_cache: no model at {args.base} (run `make smollm2`, or pass --base)")
    policy = load_policy(args.base, quantization="none", trainable=False, device="cpu")
    model, pad = policy.model, policy.tokenizer.pad_token_id
    vocab = model.get_input_embeddings().weight.shape[0]
    shapes = []
    for rows in args.rows:
        for length in args.context:
            gen = torch.Generator().manual_seed(rows * 10_000 + length)
            contexts = torch.randint(10, vocab, (rows, length), generator=gen).tolist()
            stop_after = (torch.randint(1, args.new_tokens + 1, (rows,), generator=gen) if args.lever == "leave"
                          else None)
            seconds, encoding = {"on": [], "off": []}, {"on": [], "off": []}
            turns = {}
            for _ in range(args.repeats):
                for arm in ("off", "on"):
                    with contextlib.ExitStack() as replaced:
                        for name, function in ARMS[args.lever][arm].items():
                            replaced.enter_context(mock.patch.object(prefix_cache, name, function))
                        s, first, turns[arm] = one_call(model, contexts, args.new_tokens, pad, stop_after)
                    seconds[arm].append(s)
                    encoding[arm].append(first)
            if turns["on"] != turns["off"]:
                sys.exit(f"bench_decode_cache: the two arms wrote different tokens at {rows} rows x {length} tokens")
            median = {arm: statistics.median(v) for arm, v in seconds.items()}
            decoding = {arm: [s - e for s, e in zip(seconds[arm], encoding[arm])] for arm in seconds}
            decode_median = {arm: statistics.median(v) for arm, v in decoding.items()}
            shape = {"rows": rows, "context_tokens": length, "seconds": seconds, "median_s": median,
                     "ratio_on_over_off": median["on"] / median["off"], "same_tokens": True,
                     "encode_seconds": encoding, "decode_seconds": decoding, "decode_median_s": decode_median,
                     "decode_ratio_on_over_off": decode_median["on"] / decode_median["off"]}
            if stop_after is not None:
                shape["stop_after"] = stop_after.tolist()
            shapes.append(shape)
            off, on = HEADERS[args.lever]
            print(f"{rows:>4} rows x {length:>5} tokens: {off} {median['off']:.2f} s, "
                  f"{on} {median['on']:.2f} s (x{median['on'] / median['off']:.2f})", flush=True)
    result = {"command": command_line("benchmarks/bench_decode_cache.py", sys.argv[1:] if argv is None else argv),
              "machine": machine(), "base": within_project(args.base), "lever": args.lever,
              "new_tokens": args.new_tokens, "repeats": args.repeats, "shapes": shapes}
    print(table(result), end="")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
