"""benchmarks/bench_base_builds.py measures a build on one split only: its reading turns come
from worlds of the same split as its end-to-end accuracy, so a build chosen on ``validation``
has read nothing of ``eval_worlds``."""

import pytest

import bench_base_builds  # benchmarks/bench_base_builds.py (pytest's pythonpath)
from mgrpo_ref import world as W


@pytest.mark.parametrize("split", ["validation", "eval_worlds"])
def test_the_reading_worlds_are_one_of_each_size_from_the_measured_split(split):
    seeds = W.SPLITS[split][0]
    reading = bench_base_builds.reading_worlds(split)
    assert set(reading) <= set(seeds)
    assert [W.WORLD_SCALES.get(s, 1) for s in reading] == [1, W.LARGE_SCALE]


def test_a_build_chosen_on_validation_reads_no_reported_world():
    assert set(bench_base_builds.reading_worlds("validation")).isdisjoint(W.EVAL_WORLD_SEEDS)
    assert bench_base_builds.reading_worlds("eval") == (W.EVAL_SEED,)  # one size only: no "visit long" worlds


class _Reached(Exception):
    pass


def test_the_default_split_is_validation(monkeypatch):
    """Without --split, the questions and the reading worlds both come from ``validation``."""
    seen = {"worlds": []}

    def questions(split):
        seen["split"] = split
        return []

    def stop(base, questions, subs, split):
        raise _Reached(split)

    monkeypatch.setattr(bench_base_builds, "load_questions", questions)
    monkeypatch.setattr(bench_base_builds, "oracle_sub_contexts", lambda seed, n: seen["worlds"].append(seed) or [])
    monkeypatch.setattr(bench_base_builds, "measure", stop)
    monkeypatch.setattr("sys.argv", ["bench_base_builds.py", "some/base"])
    with pytest.raises(_Reached, match="validation"):
        bench_base_builds.main()
    assert seen == {"split": "validation", "worlds": list(bench_base_builds.reading_worlds("validation"))}
