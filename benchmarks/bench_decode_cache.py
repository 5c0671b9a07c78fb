"""Decoding with a key-value cache that has room, on and off.

    python benchmarks/bench_decode_cache.py [--base models/SmolLM2-135M-Instruct] [--repeats 3]
                                            [--rows 8 16] [--context 400 800] [--new-tokens 48]

transformers' own cache (``DynamicLayer``) concatenates each pass's new keys and values onto
what it holds, so every decode pass copies every layer's whole cache once more: at a real
model's context lengths that copy is a large part of a pass (a profile of SmolLM2 at 8 rows
and 800 tokens of context put about a third of the decode time in ``aten::cat``).
``prefix_cache.with_room`` hands the decode loop a cache whose tensors already have room for
the turn's tokens, which it writes in place. Both arms run ``prefix_cache.generate`` on the
same contexts (random token ids, an empty prefix cache, greedy, no stop: exactly
``--new-tokens`` tokens per row, so the work is equal), alternating, and must write the same
tokens; "off" swaps ``with_room`` for the concatenating cache. Per shape: the median seconds
of a call in each arm over ``--repeats`` and their ratio.

Prints a table and writes benchmarks/results/real-model-cpu/decode_cache.json (docs/real-model.md
section 6 shows it: ``table``).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from common import ROOT, command_line, machine, parser, within_project, write_result


def concatenating(cache, room, rows=None):
    """``with_room`` switched off: the model's own cache, only its rows taken."""
    from mgrpo_ref.prefix_cache import select_rows

    return cache if rows is None else select_rows(cache, rows)


def one_call(model, contexts, new_tokens, pad_id):
    """One ``prefix_cache.generate`` call on ``contexts``: (seconds, the turns written)."""
    import torch

    from mgrpo_ref.prefix_cache import PrefixCache, generate

    def never(written, t):
        return torch.zeros(written.shape[0], dtype=torch.bool)

    start = time.perf_counter()
    with torch.no_grad():
        turns = generate(model, PrefixCache(64), contexts, lambda logits: logits.argmax(-1), never, new_tokens, pad_id)
    return time.perf_counter() - start, turns


def table(result: dict) -> str:
    """Markdown: per shape, each arm's median seconds per call and their ratio."""
    lines = ["| rows x context tokens | concatenating (s) | with room (s) | with room / concatenating |",
             "|---|---|---|---|"]
    for s in result["shapes"]:
        lines.append(f"| {s['rows']} x {s['context_tokens']} | {s['median_s']['off']:.1f} | {s['median_s']['on']:.1f} "
                     f"| x{s['ratio_on_over_off']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    options = parser("real-model-cpu/decode_cache", __doc__, repeats=3, base=False)
    options.add_argument("--base", default=str(ROOT / "models" / "SmolLM2-135M-Instruct"),
                         help="the model (default: models/SmolLM2-135M-Instruct; `make smollm2` makes it)")
    options.add_argument("--rows", type=int, nargs="+", default=[8, 16], help="contexts per call")
    options.add_argument("--context", type=int, nargs="+", default=[400, 800], help="tokens per context")
    options.add_argument("--new-tokens", type=int, default=48)
    args = options.parse_args(argv)

    import torch

    from mgrpo_ref import prefix_cache
    from mgrpo_ref.policy import load_policy

    if not Path(args.base).exists():
        sys.exit(f"bench_decode_cache: no model at {args.base} (run `make smollm2`, or pass --base)")
    policy = load_policy(args.base, quantization="none", trainable=False, device="cpu")
    model, pad = policy.model, policy.tokenizer.pad_token_id
    vocab = model.get_input_embeddings().weight.shape[0]
    roomy = prefix_cache.with_room
    shapes = []
    for rows in args.rows:
        for length in args.context:
            gen = torch.Generator().manual_seed(rows * 10_000 + length)
            contexts = torch.randint(10, vocab, (rows, length), generator=gen).tolist()
            seconds = {"on": [], "off": []}
            turns = {}
            for _ in range(args.repeats):
                for arm in ("off", "on"):
                    prefix_cache.with_room = roomy if arm == "on" else concatenating
                    try:
                        s, turns[arm] = one_call(model, contexts, args.new_tokens, pad)
                    finally:
                        prefix_cache.with_room = roomy
                    seconds[arm].append(s)
            if turns["on"] != turns["off"]:
                sys.exit(f"bench_decode_cache: the two arms wrote different tokens at {rows} rows x {length} tokens")
            median = {arm: statistics.median(v) for arm, v in seconds.items()}
            shapes.append({"rows": rows, "context_tokens": length, "seconds": seconds, "median_s": median,
                           "ratio_on_over_off": median["on"] / median["off"], "same_tokens": True})
            print(f"{rows:>4} rows x {length:>5} tokens: concatenating {median['off']:.2f} s, "
                  f"with room {median['on']:.2f} s (x{median['on'] / median['off']:.2f})", flush=True)
    result = {"command": command_line("benchmarks/bench_decode_cache.py", sys.argv[1:] if argv is None else argv),
              "machine": machine(), "base": within_project(args.base), "new_tokens": args.new_tokens,
              "repeats": args.repeats, "shapes": shapes}
    print(table(result), end="")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
