"""The store's cost per step with many concurrent writers, SQLite against PostgreSQL.

    python benchmarks/bench_store.py [--writers 2 8 32] [--steps 20] [--rows 64]

W writer processes (learners, or rollout workers writing their share) each write, at every
step, what a learner writes: its share of the step's rollout records (``--rows`` / W rows; 64
is B = 8 questions x K = 8 rollouts), its statistics (a JSON object of 40 numbers), then, once every writer has written, reads the
step's rollout records back (what the sub-agent's learner reads); writer 0 also marks the step
finished. Steps follow one another, each starting when every writer is done with the one
before (barriers, as steps in training). Each writer times its own store calls, not the
barriers. For each store and W: the
median over writers and steps of the seconds in the store per writer per step, that cost as a
share of a step of 2 s (the tiny base on this CPU) and of 55 s (SmolLM2 on this CPU), and the
steps per second the store holds with W writers (steps over the wall time of all of them,
barriers included).

The PostgreSQL server is pgserver's, on a Unix socket of this machine: no network round trip
is measured (over a network each statement adds one). Writes
benchmarks/results/store.json and benchmarks/results/store.md (docs/cluster.md shows it).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from common import command_line, machine, parser, write_result

STEP_SECONDS = {"tiny base, CPU": 2.0, "SmolLM2, CPU": 55.0}
"""A step's length, for the number of writers the store holds within 1% of it."""


def writer(index: int, writers: int, location: str, steps: int, rows: int, barrier, out) -> None:
    from mgrpo_ref.store import open_store

    store = open_store(location)
    mine = range(index * rows // writers, (index + 1) * rows // writers)  # this writer's rows of the step
    spent = []
    for step in range(1, steps + 1):
        barrier.wait()  # the step starts
        start = time.perf_counter()
        store.write_rollouts(step, [dict(question_index=i // 8, rollout=i % 8, qid=f"q{i // 8}", main_reward=0.5,
                                         correct=True, format_valid=True, n_sub=1) for i in mine])
        store.write_learner_stats(step, f"w{index}", {f"stat_{k}": k / 3 for k in range(40)})
        writing = time.perf_counter() - start
        barrier.wait()  # every writer has written
        start = time.perf_counter()
        if len(store.rollouts(step)) != rows:
            raise RuntimeError(f"step {step}: the store lacks rows")
        if index == 0:
            store.finish_step(step)
        spent.append(writing + time.perf_counter() - start)
    store.close()
    out.put((index, spent))


def measure(location: str, writers: int, steps: int, rows: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(writers + 1), ctx.Queue()
    processes = [ctx.Process(target=writer, args=(i, writers, location, steps, rows, barrier, out))
                 for i in range(writers)]
    for p in processes:
        p.start()
    barrier.wait()  # everyone has imported and connected: the clock starts with the first step
    start = time.perf_counter()
    for _ in range(2 * steps - 1):
        barrier.wait()
    spent = [out.get(timeout=600) for _ in processes]
    wall = time.perf_counter() - start
    for p in processes:
        p.join()
    per_step = median(s for _, seconds in spent for s in seconds)
    return {"writers": writers, "store_s_per_writer_step": round(per_step, 5),
            "steps_per_s": round(steps / wall, 2),
            "percent_of_step": {name: round(100 * per_step / length, 3) for name, length in STEP_SECONDS.items()}}


def table(results: dict) -> str:
    lines = ["| store | writers | store ms per writer per step | steps/s it holds | % of a 2-s step "
             "| % of a 55-s step |", "|---|---:|---:|---:|---:|---:|"]
    for store, rows in results.items():
        for r in rows:
            share = list(r["percent_of_step"].values())
            lines.append(f"| {store} | {r['writers']} | {1000 * r['store_s_per_writer_step']:.2f} | "
                         f"{r['steps_per_s']:.1f} | {share[0]:.2f} | {share[1]:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    options = parser("store", __doc__, steps=20, base=False)
    options.add_argument("--writers", type=int, nargs="+", default=[2, 8, 32])
    options.add_argument("--rows", type=int, default=64)
    args = options.parse_args()
    try:
        import pgserver
    except ImportError:
        sys.exit("error: this benchmark needs the extra .[cluster] (pgserver, psycopg)")
    import psycopg

    results = {"SQLite": [], "PostgreSQL": []}
    with tempfile.TemporaryDirectory() as folder:
        server = pgserver.get_server(Path(folder) / "pg", cleanup_mode="stop")
        try:
            for n, writers in enumerate(args.writers):
                from mgrpo_ref.store import open_store

                sqlite = str(Path(folder) / f"store{n}.sqlite")
                open_store(sqlite, create=True).close()
                with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE store{n}")
                postgres = server.get_uri(f"store{n}")
                open_store(postgres, create=True).close()
                for name, location in (("SQLite", sqlite), ("PostgreSQL", postgres)):
                    results[name].append(measure(location, writers, args.steps, args.rows))
                    print(name, json.dumps(results[name][-1]), flush=True)
        finally:
            server.cleanup()
    write_result(args.out, {"command": command_line("benchmarks/bench_store.py", sys.argv[1:]), "machine": machine(),
                            "steps": args.steps, "rows_per_step": args.rows, "step_seconds": STEP_SECONDS,
                            "results": results})
    args.out.with_suffix(".md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
