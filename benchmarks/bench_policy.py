"""Benchmark the QLoRA policy: peak memory (4-bit vs 32-bit) and sampling throughput.

    python benchmarks/bench_policy.py [--base data/base] [--out benchmarks/results/policy.json]

Memory: each (size, quantization) is loaded in a fresh subprocess; we report the model's
own footprint (``get_memory_footprint``: parameters and buffers) and the process's peak
resident memory growth over a baseline taken after importing torch and transformers. Sizes:
the default base (data/base) and a randomly initialised Qwen2 of about 86M parameters.
The footprint is the steady state; the RSS growth includes the load, where a 4-bit model is
read in full precision and quantised layer by layer.
Throughput: tokens generated per second by ``Policy.act`` on the default base in 4-bit,
at batch 1, 16 and 64, sampling at temperature 1 with no stop tag (so every row runs to
max_new_tokens).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def measure_memory(path: str, quantization: str) -> dict:
    """Run in a subprocess: load the policy, one forward pass, report memory."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from mgrpo_ref.policy import load_policy

    baseline = peak_rss_mb()
    policy = load_policy(path, quantization=quantization, device="cpu", nf4_on_cpu="packed")  # 4-bit as stored
    ids = torch.randint(0, policy.model.get_input_embeddings().num_embeddings, (4, 128))
    with torch.no_grad():
        policy.token_logprobs(ids, torch.ones_like(ids))
    n_params = sum(p.numel() for p in policy.model.parameters())
    return {"quantization": quantization, "n_parameters": n_params,
            "footprint_mb": policy.model.get_memory_footprint() / 2**20,
            "peak_rss_growth_mb": peak_rss_mb() - baseline}


def make_medium(out: Path, base: Path) -> Path:
    """A random Qwen2 of ~86M parameters with the default base's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tok = AutoTokenizer.from_pretrained(base)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def throughput(base: Path, batch_sizes=(1, 16, 64), new_tokens: int = 32) -> list[dict]:
    from unittest import mock

    from mgrpo_ref.policy import SamplingSettings, load_policy
    from mgrpo_ref.world import load_questions

    policy = load_policy(base, sampling=SamplingSettings(temperature=1.0, max_new_tokens=new_tokens))
    policy._stop_ids = {r: [policy.tokenizer.pad_token_id] for r in policy._stop_ids}  # never stop early
    questions = load_questions("eval")
    rows = []
    with mock.patch("mgrpo_ref.policy.stop_strings", lambda role: []):  # and keep every generated token
        for b in batch_sizes:
            contexts = [f"<question>{q.text}</question>\n" for q in questions[:b]]
            policy.act("main", contexts[:1])  # warm-up
            start = time.perf_counter()
            turns = policy.act("main", contexts)
            seconds = time.perf_counter() - start
            tokens = sum(len(t.ids) for t in turns)
            rows.append({"batch": b, "tokens": tokens, "seconds": round(seconds, 3),
                         "tokens_per_s": round(tokens / seconds, 1)})
            print(f"batch {b:3d}: {tokens:5d} tokens in {seconds:6.2f} s = {tokens / seconds:8.1f} tokens/s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, default=ROOT / "data" / "base")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "policy.json")
    parser.add_argument("--memory-child", nargs=2, metavar=("PATH", "QUANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(measure_memory(*args.memory_child)))
        return

    results = {"memory": [], "throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {"default base": args.base, "medium (random)": make_medium(Path(tmp) / "medium", args.base)}
        for name, path in sizes.items():
            for quant in ("nf4", "none"):
                proc = subprocess.run([sys.executable, __file__, "--memory-child", str(path), quant],
                                      capture_output=True, text=True, check=True)
                row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"model": name}
                results["memory"].append(row)
                print(f"{name:16s} {quant:5s} {row['n_parameters'] / 1e6:7.2f}M params  "
                      f"footprint {row['footprint_mb']:8.1f} MB  peak RSS growth {row['peak_rss_growth_mb']:8.1f} MB")
    results["throughput"] = throughput(args.base)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
