"""The README and docs/ against the repository: links resolve, the headline numbers come from
the committed results, and the package docstring's module map matches the package's files.

Fast: reads text files only, loads no model.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from helpers import MODULES, resolves

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
COMPARISON = ROOT / "benchmarks" / "results" / "comparison-cpu-long"
"""The comparison the README and docs/results.md report."""
RECIPES = ROOT / "benchmarks" / "results" / "recipes-cpu"
"""The recipes tried against the comparison's on the validation split (docs/results.md)."""
TABLE = COMPARISON / "table.md"
PACKAGE = ROOT / "mgrpo_ref"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
HISTORY_WORDS = ("session", "previous base", "issue 6")


def relative_links(path: Path) -> list[str]:
    """The link targets in a markdown file that point into the repository (no URL, no anchor-only)."""
    text = path.read_text()
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def headline_table(text: str) -> list[str]:
    """The lines of the first markdown table under the README's "M-GRPO against its baselines"."""
    section = text.split("\n### M-GRPO against its baselines", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def listed_modules() -> list[str]:
    """The module file names listed in the package docstring's map (``name.py  description``)."""
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    return re.findall(r"^\s+(\w+\.py)\s", doc, flags=re.MULTILINE)


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a markdown file's headings: lower case, punctuation dropped,
    spaces as hyphens ("## The policy: memory" -> "the-policy-memory")."""
    headings = re.findall(r"^#+\s+(.*)$", path.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_an_existing_file(path):
    broken = [t for t in relative_links(path) if not (path.parent / t.split("#")[0]).exists()]
    assert not broken, f"{path.name} links to missing files: {broken}"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_into_a_page_names_one_of_its_headings(path):
    for target in relative_links(path):
        page, _, anchor = target.partition("#")
        if anchor and page.endswith(".md"):
            assert anchor in anchors(path.parent / page), f"{path.name}: no heading for {target}"


def test_the_docs_folder_has_pages():
    assert {"world.md", "base-model.md", "training.md", "results.md", "gpu.md", "history.md"} <= {p.name for p in DOCS}


def test_every_row_of_the_headline_table_comes_from_the_committed_results():
    rows = headline_table(README.read_text())
    committed = set(TABLE.read_text().splitlines())
    assert len(rows) >= 3, "the README's headline results table is missing"
    typed = [row for row in rows if row not in committed]
    assert not typed, f"rows not in {TABLE.relative_to(ROOT)}: {typed}"


def test_the_history_s_comparison_tables_are_the_committed_60_step_comparison_s():
    section = (ROOT / "docs" / "history.md").read_text().split("\n## The comparison on the fourth base\n", 1)[1]
    rows = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("| ")]
    sixty = ROOT / "benchmarks" / "results" / "comparison-cpu"
    committed = set((sixty / "table.md").read_text().splitlines()) | set((sixty / "differences.md").read_text().splitlines())
    assert len(rows) >= 2 + 11 + 8, "the history's 60-step tables are missing"
    typed = [row for row in rows if row not in committed]
    assert not typed, f"docs/history.md: rows not in {sixty.relative_to(ROOT)}: {typed}"


def test_the_readme_says_where_to_start_reading():
    assert "mgrpo_ref/step.py" in README.read_text()


def test_the_readme_tells_no_history():
    text = README.read_text().lower()
    found = [word for word in HISTORY_WORDS if word in text]
    assert not found, f"history words in README.md: {found} (history belongs in docs/history.md)"


def test_the_readme_links_the_history_once():
    assert README.read_text().count("docs/history.md)") == 1


def test_the_readme_map_names_every_module():
    text = README.read_text()
    unnamed = [p.name for p in sorted(PACKAGE.glob("*.py")) if p.name != "__init__.py" and p.name not in text]
    assert not unnamed, f"modules the README's code map does not name: {unnamed}"


def test_the_module_map_lists_exactly_the_package_files():
    listed = listed_modules()
    files = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(listed) == len(set(listed)), "a module is listed twice"
    missing_files = sorted(set(listed) - set(files))
    unlisted = sorted(set(files) - set(listed))
    assert not missing_files, f"listed in mgrpo_ref/__init__.py but not in the package: {missing_files}"
    assert not unlisted, f"in the package but not listed in mgrpo_ref/__init__.py: {unlisted}"


def test_the_link_helpers_on_a_hand_made_page(tmp_path):
    """Links: one good, one broken with an anchor, a URL, an anchor alone, an image. Anchors:
    a colon dropped, spaces as hyphens."""
    (tmp_path / "here.md").write_text("x")
    page = tmp_path / "page.md"
    page.write_text("[a](here.md) [b](gone.md#part) [c](https://example.org) [d](#top) ![e](here.md)")
    assert relative_links(page) == ["here.md", "gone.md#part", "here.md"]
    page.write_text("# Results\n## The policy: memory and sampling speed\n## make train\n")
    assert anchors(page) == {"results", "the-policy-memory-and-sampling-speed", "make-train"}


SPEED = ROOT / "benchmarks" / "results" / "speed.md"


def unsaid(path: Path, phrases: list[str]) -> list[str]:
    """The phrases that ``path`` does not say, a line break or a run of spaces in either read as one space."""
    text = " ".join(path.read_text().split())
    return [phrase for phrase in phrases if " ".join(phrase.split()) not in text]


def section_table_rows(text: str, heading: str) -> list[str]:
    """Every table row ("| ...") under a "## heading" up to the next "## "."""
    section = text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]


def test_the_speed_tables_are_what_the_committed_results_give():
    from speed_table import render

    assert SPEED.read_text() == render(), "run: python benchmarks/speed_table.py"


@pytest.mark.parametrize("path, heading", [(README, "Speed"), (ROOT / "docs" / "results.md", "Time"),
                                           (ROOT / "docs" / "results.md", "The sub-agent's batch")])
def test_every_speed_row_in_the_docs_comes_from_the_speed_tables(path, heading):
    rows = section_table_rows(path.read_text(), heading)
    committed = set(SPEED.read_text().splitlines())
    assert len(rows) >= 4, f"{path.name}: no speed table under '## {heading}'"
    typed = [row for row in rows if row not in committed]
    assert not typed, f"{path.name}: rows not in {SPEED.relative_to(ROOT)}: {typed}"


REAL_MODEL = ROOT / "benchmarks" / "results" / "real-model-cpu"
REAL_MODEL_DOC = ROOT / "docs" / "real-model.md"


def test_the_real_model_summary_is_what_its_stages_give():
    from real_model_cpu import summary

    assert (REAL_MODEL / "summary.md").read_text() == summary(REAL_MODEL), \
        "run: python benchmarks/real_model_cpu.py --summary"


def test_the_real_step_speed_table_in_the_docs_is_the_committed_one():
    text = REAL_MODEL_DOC.read_text()
    assert (REAL_MODEL / "speed.md").read_text().strip() in text
    result = json.loads((REAL_MODEL / "speed.json").read_text())
    assert set(result["arms"]) == {"today", "levers", "cache and budget", "shared prefix", "shared prefix, lean"}
    assert result["command"].startswith("python benchmarks/")
    arms = result["arms"]
    ratio = {arm: f["ratio_to_today"]["seconds_per_episode"] for arm, f in arms.items()}
    lean = arms["shared prefix, lean"]
    said = [f"(x{ratio['shared prefix']:.2f}; x{ratio['shared prefix, lean']:.2f} in the lean arm)",
            f"alone give x{ratio['cache and budget']:.2f}",
            f"({arms['shared prefix']['seconds_per_episode']:.2f} against {arms['cache and budget']['seconds_per_episode']:.2f} s per episode)",
            f": {lean['peak_mib']['main']:,} and {lean['peak_mib']['sub']:,} MiB",
            f"in the sub worker ({arms['shared prefix']['peak_mib']['sub']:,} MiB)",
            f"alone gain little time (x{ratio['levers']:.2f})",
            "today's step took " + " and ".join(f"{s:.1f}" for s in arms["today"]["step_seconds"]) + " s"]
    assert max(lean["peak_mib"].values()) < 3 * 1024 and max(arms["levers"]["peak_mib"].values()) < 4 * 1024  # "under 3 GiB", "under 4 GiB"
    assert arms["shared prefix"]["peak_mib"]["sub"] > 4 * 1024 and ratio["shared prefix, lean"] < 0.5
    assert unsaid(REAL_MODEL_DOC, said) == []
    assert unsaid(README, [f"(x{ratio['shared prefix']:.2f})"]) == []


def test_the_bfloat16_step_speed_in_the_docs_is_the_committed_run():
    """docs/real-model.md's prose on the bfloat16 step quotes that run (its table, speed-bf16.md,
    is checked whole with the section's other tables)."""
    result = json.loads((REAL_MODEL / "speed-bf16.json").read_text())
    arms = result["arms"]
    assert set(arms) == {"today", "shared prefix, lean", "shared prefix, lean, bf16"}
    assert "avx512_bf16" in result["machine"] and result["command"].startswith("python benchmarks/")
    lean, bf16 = arms["shared prefix, lean"], arms["shared prefix, lean, bf16"]
    said = [f"(x{bf16['ratio_to_today']['seconds_per_episode']:.2f} against x{lean['ratio_to_today']['seconds_per_episode']:.2f}",
            " and ".join(f"{s:.1f}" for s in bf16["step_seconds"]) + " s against "
            + " and ".join(f"{s:.1f}" for s in lean["step_seconds"]) + " s",
            f"({lean['peak_mib']['main']:,} and {lean['peak_mib']['sub']:,} MiB)"]
    assert unsaid(REAL_MODEL_DOC, said) == []


def test_the_bfloat16_figures_in_the_docs_are_the_committed_ones():
    result = json.loads((REAL_MODEL / "bf16_effect.json").read_text())
    lp, ratio, greedy = result["logprobs"], result["ratio_bf16_to_fp32"], result["greedy"]
    expected = [
        f"| trained tokens compared | {lp['main']['tokens']} | {lp['sub']['tokens']} |",
        f"| mean absolute difference of their log-probabilities | {lp['main']['mean_abs_difference']:.4f} "
        f"| {lp['sub']['mean_abs_difference']:.4f} |",
        f"| largest | {lp['main']['max_abs_difference']:.2f} | {lp['sub']['max_abs_difference']:.2f} |",
        f"| tokens whose probability ratio leaves the clip range [{result['clip_range'][0]:g}, "
        f"{result['clip_range'][1]:g}] | {100 * lp['main']['share_outside_clip']:.2f}% | "
        f"{100 * lp['sub']['share_outside_clip']:.2f}% |",
        f"| forward and backward pass, bfloat16 / float32 | x{ratio['forward_backward_main']:.2f} "
        f"| x{ratio['forward_backward_sub']:.2f} |",
        f"{greedy['questions']} episodes, token for token ({greedy['identical_transcripts']} identical",
        f"{100 * greedy['accuracy']['float32']:.1f}% right in each), but generating them took "
        f"x{ratio['greedy_episodes']:.2f} as long",
    ]
    assert unsaid(REAL_MODEL_DOC, expected) == []
    assert greedy["accuracy"]["float32"] == greedy["accuracy"]["bfloat16"]  # "29.2% right in each"
    assert "amx_bf16" in result["machine"]


def test_the_decode_cache_table_in_the_docs_is_the_committed_one():
    import bench_decode_cache  # benchmarks/bench_decode_cache.py (pytest's pythonpath)

    result = json.loads((REAL_MODEL / "decode_cache.json").read_text())
    assert all(shape["same_tokens"] for shape in result["shapes"])
    assert unsaid(REAL_MODEL_DOC, bench_decode_cache.table(result).splitlines()) == []
    shape = {(s["rows"], s["context_tokens"]): s for s in result["shapes"]}
    assert max(shape[8, 800]["seconds"]["on"]) < min(shape[8, 800]["seconds"]["off"])  # "every call with room was shorter"
    big = shape[16, 800]["seconds"]
    assert max(big["on"]) > min(big["off"])  # "the calls of the two arms overlap"
    seconds = big["on"] + big["off"]
    assert unsaid(REAL_MODEL_DOC, [f"({min(seconds):.0f} to {max(seconds):.0f} s over its six calls)"]) == []
    wide = json.loads((REAL_MODEL / "decode_cache-64.json").read_text())
    (s,) = wide["shapes"]
    assert s["same_tokens"] and s["rows"] == 64 and max(s["seconds"]["on"]) < min(s["seconds"]["off"])  # "both ... shorter"
    gap = s["median_s"]["off"] - s["median_s"]["on"]
    said = bench_decode_cache.table(wide).splitlines() + [
        f"Both calls with room ({' and '.join(f'{x:.1f}' for x in sorted(s['seconds']['on']))} s)",
        f"both without ({' and '.join(f'{x:.1f}' for x in sorted(s['seconds']['off']))} s)",
        f"medians differ by {gap:.1f} s, {gap / wide['new_tokens']:.2f} s for each of the {wide['new_tokens']} new tokens"]
    assert unsaid(REAL_MODEL_DOC, said) == []


def test_the_two_levers_that_leave_the_numbers_are_said_as_measured():
    """docs/real-model.md on stopped rows leaving the decode batch and on skip_zero_advantage:
    its figures are decode_leave-64.json's and speed-rows.json's."""
    import bench_decode_cache  # benchmarks/bench_decode_cache.py (pytest's pythonpath)
    from real_step_speed import table

    leave = json.loads((REAL_MODEL / "decode_leave-64.json").read_text())
    (shape,) = leave["shapes"]
    decoding = shape["decode_seconds"]
    assert leave["lever"] == "leave" and shape["same_tokens"] and shape["rows"] == 64
    assert max(decoding["on"]) < min(decoding["off"])  # "every call in which the stopped rows left took less time"
    run = json.loads((REAL_MODEL / "speed-rows.json").read_text())
    assert (REAL_MODEL / "speed-rows.md").read_text() == table(run)
    assert run["command"].startswith("python benchmarks/real_step_speed.py")
    lean, skip = run["arms"]["shared prefix, lean"], run["arms"]["shared prefix, lean, skip"]
    assert skip["overrides"] == lean["overrides"] + ["skip_zero_advantage=true"]

    def both(seconds):
        return " and ".join(f"{s:.1f}" for s in seconds)

    before = json.loads((REAL_MODEL / "speed-bf16.json").read_text())["arms"]["shared prefix, lean"]  # rows stayed
    assert before["overrides"] == lean["overrides"]
    by = {arm: f["update_seconds_by_learner"] for arm, f in (("lean", lean), ("skip", skip))}
    assert max(by["skip"]["main"]) < min(by["lean"]["main"])  # "shortens the main learner's update"
    saved = [a - b for a, b in zip(lean["update_seconds"], skip["update_seconds"])]
    noise = abs(lean["rollout_seconds"][0] - skip["rollout_seconds"][0])  # the same episodes in both arms
    assert noise > 4 * max(saved)  # "far larger than the lever's whole effect"
    fastest = min(f["ratio_to_today"]["seconds_per_episode"] for f in run["arms"].values())
    assert fastest > 0.25  # "a quarter ... is still not reached"
    said = bench_decode_cache.table(leave).splitlines() + [
        f"({min(decoding['on']):.1f} to {max(decoding['on']):.1f} s against "
        f"{min(decoding['off']):.1f} to {max(decoding['off']):.1f} s)",
        f"The main learner's update took {both(by['skip']['main'])} s against {both(by['lean']['main'])} s",
        f"{both(by['skip']['sub'])} s against {both(by['lean']['sub'])} s",
        f"{both(skip['update_seconds'])} s against {both(lean['update_seconds'])} s, {both(saved)} s less",
        f"took {lean['rollout_seconds'][0]:.1f} s in one\n  arm and {skip['rollout_seconds'][0]:.1f} s in the other",
        f"is at x{fastest:.2f}",
        f"at {before['seconds_per_episode']:.2f} s per trained episode (its steps {both(before['step_seconds'])} s) "
        f"against {lean['seconds_per_episode']:.2f} here ({both(lean['step_seconds'])} s)"]
    assert unsaid(REAL_MODEL_DOC, said) == []


def test_the_rollout_calls_are_said_as_recorded():
    """docs/real-model.md on where the rollouts' time goes: rollout_calls.json's figures."""
    from rollout_calls import SMALL, tables

    result = json.loads((REAL_MODEL / "rollout_calls.json").read_text())
    assert (REAL_MODEL / "rollout_calls.md").read_text() == tables(result)
    assert result["command"].startswith("python benchmarks/rollout_calls.py")
    calls = result["calls"]
    big, small = [c for c in calls if c["rows"] > SMALL], [c for c in calls if c["rows"] <= SMALL]
    assert calls[:len(big)] == big  # the big calls come first, then the tail
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
    small_s, rollout_s = sum(c["seconds"] for c in small), result["rollout_seconds"]
    assert 0.4 < small_s / rollout_s < 0.6  # "half of the rollouts' time"
    ms = {p["rows"]: 1000 * p["median_s"] for p in result["decode_pass"]}
    assert 0.15 < ms[1] / ms[64] < 0.35  # "about a quarter of a pass over all 64 rows"
    said = [f"The first {words[len(big) - 1]} calls hold every episode and take {sum(c['seconds'] for c in big):.1f} s",
            f"make {len(small)} calls of at most {words[max(c['rows'] for c in small) - 1]} rows, which take "
            f"{small_s:.1f} s of the {rollout_s:.1f} s",
            f"({ms[1]:.0f} ms for one row, {ms[16]:.0f} ms for 16, {ms[64]:.0f} ms for 64)"]
    assert unsaid(REAL_MODEL_DOC, said) == []


def test_the_step_s_floor_is_said_as_recorded():
    """docs/real-model.md on the least time two cores could take: step_floor.json's figures, and
    the study's four hours from its results' recorded seconds."""
    from statistics import mean

    from step_floor import table

    result = json.loads((REAL_MODEL / "step_floor.json").read_text())
    assert (REAL_MODEL / "step_floor.md").read_text() == table(result)
    assert result["command"].startswith("python benchmarks/step_floor.py")
    today, lean = result["arms"]["today"], result["arms"]["shared prefix, lean, skip"]
    b, s = lean["bounds"], lean["seconds"]
    ratio = b["floor_per_episode_s"] / today["bounds"]["pipeline_per_episode_s"]
    assert 0.25 < ratio and b["floor_holds"] and not today["bounds"]["floor_holds"]
    for name in ("main_update", "sub_update"):  # the same batch in both arms and on both thread counts
        values = [arm["sampled_nll"][name][n] for arm in (today, lean) for n in ("1", "2")]
        assert max(values) - min(values) < 1e-7
    same = ("calls", "passes", "sub_calls_per_episode")  # both arms' rollouts, on each thread count
    assert len({tuple(arm["rollouts"][n][key] for key in same) for arm in (today, lean) for n in ("1", "2")}) == 1
    small = lean["rollouts"]["1"]["small_calls_s"]
    assert 0.4 < small / s["rollouts"]["1"] < 0.6  # "half of their one-thread time"
    # the study: four hours less its recorded warm-up and evaluations, and the validation evaluations
    # at the 240-question evaluations' rate, over its steps
    study = ROOT / "benchmarks" / "results" / "real-study"
    warm = json.loads((study / "warm_up.json").read_text())
    runs = [json.loads(f.read_text()) for f in sorted(study.glob("*-s*.json"))]
    evaluations = [warm["seconds"]] + [r[k]["seconds"] for r in runs
                                       for k in ("final", "trained_main_warm_up_sub", "warm_up_main_trained_sub") if k in r]
    left = 4 * 3600 - warm["warm_up_seconds"] - sum(evaluations)
    steps, validations = sum(r["config"]["steps"] for r in runs), sum(len(r["validation_curve"]) for r in runs)
    rate = sum(evaluations) / len(evaluations) / 240  # seconds a question
    per_step = (left - validations * 60 * rate) / steps
    half = 32 / 64  # a study step's episodes against this step's
    pipeline = {"mgrpo": b["pipeline_s"] * half, "frozen_sub": (s["rollouts"]["2"] + s["main_update"]["1"]) * half}
    floor = {"mgrpo": b["floor_s"] * half, "frozen_sub": (s["rollouts"]["1"] + s["main_update"]["1"]) / 2 * half}
    hours = (4 * 3600 - left + validations * 60 * rate + steps * mean(pipeline.values())) / 3600
    calls = [mean(r["train_sub_calls"]) for r in runs]
    assert len(evaluations) == 9 and steps == 240 and validations == 28
    assert max(floor.values()) > per_step > mean(floor.values()) and min(pipeline.values()) > per_step
    said = [f"gain x{b['speedup']['rollouts']:.2f} (rollouts), x{b['speedup']['main_update']:.2f} and\n  "
            f"x{b['speedup']['sub_update']:.2f} (the updates)",
            f"its floor holds: {b['floor_s']:.1f} s for the step, {b['floor_per_episode_s']:.2f} s\n  per trained "
            f"episode, x{ratio:.2f} of today's step",
            f"ran x{today['bounds']['speedup']['main_update']:.2f} faster",
            f"at best x{b['floor_s'] / b['pipeline_s']:.2f} of the pipeline's",
            f"takes {b['pipeline_s']:.1f} s where the floor is {b['floor_s']:.1f} s. Of the "
            f"{b['pipeline_s'] - b['floor_s']:.1f} s",
            f"{s['rollouts']['2'] - s['rollouts']['1'] / 2:.1f} s is the rollouts, which gain only "
            f"x{b['speedup']['rollouts']:.2f}",
            f"their one-thread time, {small:.1f} s,",
            f"the other {(s['sub_update']['1'] - s['main_update']['1']) / 2:.1f} s is the main\n  learner's core idle "
            f"for {s['sub_update']['1'] - s['main_update']['1']:.1f} s",
            f"the same {lean['rollouts']['1']['calls']} calls and {lean['rollouts']['1']['passes']} passes",
            f"warm-up took {warm['warm_up_seconds']:,.0f} s and its nine evaluations on\nthe 240 questions "
            f"{sum(evaluations):,.0f} s",
            f"leaves {left:,.0f} s of four hours for its {steps} steps and their {validations} validation",
            f"({rate:.2f} s a question;",
            f"those take about {validations * 60 * rate:,.0f} s, which leaves\n{per_step:.1f} s a step",
            f"take {pipeline['mgrpo']:.1f} s in an M-GRPO run and {pipeline['frozen_sub']:.1f} s in a control run",
            f"{hours:.1f} hours for the study",
            f"Only at the floor, {floor['mgrpo']:.1f} and {floor['frozen_sub']:.1f} s, would such steps fit "
            f"({mean(floor.values()):.1f} s on\naverage",
            f"called the sub-agent {min(calls):.2f} to {max(calls):.2f} times an episode",
            f"against {lean['rollouts']['1']['sub_calls_per_episode']:.2f} here"]
    assert unsaid(REAL_MODEL_DOC, said) == []
    skip = json.loads((REAL_MODEL / "speed-rows.json").read_text())["arms"]["shared prefix, lean, skip"]
    assert unsaid(README, [f"a step takes x{skip['ratio_to_today']['seconds_per_episode']:.2f} of the\ndefaults' time",
                           f"a floor of x{ratio:.2f} of the defaults' step"]) == []


def test_the_shares_of_groups_with_a_signal_count_every_group_of_k():
    """The signal stage's exact shares (real_model_cpu.shares_over_subgroups), against listing
    every group of k of the rollouts."""
    from itertools import combinations

    from real_model_cpu import shares_over_subgroups

    rewards, correct = [1.0, 0.1, 0.1, 0.0, 1.0, 0.1], [True, False, False, False, True, False]
    for k in range(2, 7):
        groups = list(combinations(range(6), k))
        differing = sum(len({rewards[i] for i in g}) > 1 for g in groups) / len(groups)
        right = sum(any(correct[i] for i in g) for g in groups) / len(groups)
        assert shares_over_subgroups(rewards, correct, k) == pytest.approx((differing, right))


@pytest.mark.parametrize("path, heading, tables", [(README, "Bring your own model", 1),  # the first table only
                                                   (REAL_MODEL_DOC, "5. Measured on this CPU", None)])  # None: every table
def test_every_real_model_row_in_the_docs_comes_from_the_summary(path, heading, tables):
    rows = section_table_rows(path.read_text(), heading)
    blocks = (REAL_MODEL / "summary.md").read_text().strip().split("\n\n")
    committed = set("\n".join(blocks).splitlines())
    typed = [row for row in rows if row not in committed]
    assert not typed, f"{path.name}: rows not in {(REAL_MODEL / 'summary.md').relative_to(ROOT)}: {typed}"
    missing = [line for block in blocks[:tables] for line in block.splitlines() if line.startswith("| ") and line not in rows]
    assert not missing, f"{path.name}: summary rows missing under '## {heading}': {missing}"


@pytest.mark.parametrize("path", [README, ROOT / "docs" / "results.md"], ids=lambda p: p.name)
def test_every_paired_difference_in_the_docs_comes_from_the_committed_results(path):
    committed = set((COMPARISON / "differences.md").read_text().splitlines())
    rows = [line for line in path.read_text().splitlines() if line.startswith("| ") and " - mgrpo |" in line]
    assert len(rows) >= 3, f"{path.name}: the paired differences are missing"
    typed = [row for row in rows if row not in committed]
    assert not typed, f"{path.name}: rows not in differences.md: {typed}"
    overall = (COMPARISON / "differences.md").read_text().split("\n\n")[0].splitlines()[2:]  # both decodings
    missing = [row for row in overall if row not in rows]
    assert not missing, f"{path.name}: rows of differences.md's first table missing: {missing}"


QUOTED = re.compile(r"([+-]?\d+\.\d)(?:\s+points)?\s+\[([+-]?\d+\.\d),\s+([+-]?\d+\.\d)\]")
"""An interval as prose quotes it: "-45.2 [-55.7, -34.7]" or "-45.2 points [-55.7, -34.7]", on one
line or broken across two."""
REPORTED = re.compile(r"([+-]?\d+\.\d)(?: \| | )\[([+-]?\d+\.\d), ([+-]?\d+\.\d)\]")
"""An interval as a report writes it, in a table's cells ("| -45.2 | [-55.7, -34.7]") or in one cell."""


def unreported_intervals(prose: str, reports: str) -> list[str]:
    """The intervals quoted in ``prose`` (its lines outside tables) that no report states."""
    stated = {tuple(map(float, m.groups())) for m in REPORTED.finditer(reports)}
    lines = "\n".join(line for line in prose.splitlines() if not line.startswith("|"))
    return [m.group(0) for m in QUOTED.finditer(lines) if tuple(map(float, m.groups())) not in stated]


@pytest.mark.parametrize("path, heading, results", [
    (README, "### M-GRPO against its baselines", COMPARISON),
    (ROOT / "docs" / "results.md", "## M-GRPO against its baselines", COMPARISON),
    (ROOT / "docs" / "results.md", "## Other recipes, on the validation split", RECIPES)],
    ids=["README.md", "results.md", "results.md-recipes"])
def test_every_interval_the_comparison_s_prose_quotes_is_in_its_reports(path, heading, results):
    section = path.read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    reports = "\n".join((results / name).read_text() for name in ("differences.md", "stability.md"))
    assert QUOTED.search(section), f"{path.name}: the comparison's prose quotes no interval"
    typed = unreported_intervals(section, reports)
    assert not typed, f"{path.name}: intervals in the prose that no report of {results.name} states: {typed}"


def test_the_recipes_table_is_what_the_stability_report_gives():
    """Each recipe's best, final and collapse cells in docs/results.md are its row of the
    committed stability.md, and every recipe tried has a row."""
    from mgrpo_ref.compare import RECIPES as TRIED

    report = {row.split("|")[1].strip(): [c.strip() for c in row.split("|")[3:6]]
              for row in (RECIPES / "stability.md").read_text().splitlines()[2:]}
    rows = section_table_rows((ROOT / "docs" / "results.md").read_text(), "Other recipes, on the validation split")
    typed = {row.split("|")[1].strip().split()[0].strip("`"): [c.strip() for c in row.split("|")[2:5]]
             for row in rows[1:]}
    assert set(typed) == {"mgrpo", *TRIED} == set(report)
    assert typed == report


def test_the_collapse_timelines_in_the_docs_are_what_the_runs_own_curves_give():
    """docs/results.md's table of collapsed runs is ``collapse_timelines`` of the 60-step
    comparison's and the recipes trial's committed results, and the runs reported on have none."""
    from mgrpo_ref.compare_tables import collapse_timelines, collapse_timelines_table

    results = {name: json.loads((ROOT / "benchmarks" / "results" / name / "results.json").read_text())
               for name in ("comparison-cpu", "recipes-cpu", "comparison-cpu-long", "stability-cpu")}
    rows = collapse_timelines(results["comparison-cpu"]) + collapse_timelines(results["recipes-cpu"])
    expected = [line for line in collapse_timelines_table(rows).splitlines() if line.startswith("| `")]
    section = (ROOT / "docs" / "results.md").read_text().split("\n### What moves before a collapse\n", 1)[1]
    typed = [line for line in section.split("\n### ", 1)[0].splitlines() if line.startswith("| `")]
    assert typed == expected and len(expected) == 10
    assert not collapse_timelines(results["comparison-cpu-long"]) and not collapse_timelines(results["stability-cpu"])


def test_the_lr_3e_3_collapse_figures_in_the_docs_are_its_records():
    """The sampled-token NLL windows, the gradient norms before the first update past the clip
    and the lead times of the 60-step collapses that results.md quotes, computed from the
    committed per-step records and results."""
    from mgrpo_ref.compare_tables import collapse_timelines
    from mgrpo_ref.diagnosis import window_means

    results = ROOT / "benchmarks" / "results"
    runs = json.loads((results / "collapse" / "steps-recipes-cpu.json").read_text())["runs"]
    nll = {run: window_means(r["series"]["step"], r["series"]["main/sampled_nll"], 20) for run, r in runs.items()}
    fast = runs["lr_3e-3-s1"]["series"]
    others = [w for run, w in nll.items() if not run.startswith("lr_3e-3")]
    siblings = [v for run in ("lr_3e-3-s0", "lr_3e-3-s2") for v in nll[run].values()]
    before = {role: max(n for s, n in zip(fast["step"], fast[f"{role}/grad_norm"]) if s < 72) for role in ("main", "sub")}
    leads = {}
    for r in collapse_timelines(json.loads((results / "comparison-cpu" / "results.json").read_text())):
        dip = min(t["format_below"][0] for t in r["roles"].values() if t["format_below"])
        leads.setdefault(r["variant"] == "single_agent_3x", []).append(dip - min(
            t["past_clip"][0] for t in r["roles"].values() if t["past_clip"]))
    said = [", ".join(f"{v:.2f}" for v in list(nll["lr_3e-3-s1"].values())[:3]) + f" and {nll['lr_3e-3-s1'][61]:.2f}",
            f"at most {max(w[61] for w in others):.3f} over steps 61-80",
            f"between {min(siblings):.3f} and {max(siblings):.2f}",
            f"(the others at most {max(w[1] for w in others):.2f})",
            f"at most {before['main']:.2f} for the main learner and {before['sub']:.2f} for the sub",
            f"{min(leads[False])} to {max(leads[False])} steps before in the team arms",
            f"{min(leads[True])} to {max(leads[True])} in `single_agent_3x`"]
    assert len(others) == 18
    assert not unsaid(ROOT / "docs" / "results.md", said), unsaid(ROOT / "docs" / "results.md", said)


def test_the_stability_trials_in_the_docs_are_their_reports_and_results():
    """The tables under "Over three times the horizon" are the rows of stability-cpu's and
    stability-single-cpu's stability.md, and the single agent's figures in the prose are its
    results': the largest fall, the largest gradient norm, the lowest format validity, the
    share of two-hop questions answered and the training time."""
    results = ROOT / "benchmarks" / "results"
    text = (ROOT / "docs" / "results.md").read_text()
    section = text.split("\n### Over three times the horizon\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "from step" in line]
    reported = [line for name in ("stability-cpu", "stability-single-cpu")
                for line in (results / name / "stability.md").read_text().splitlines()[2:]]
    assert rows == reported
    single = json.loads((results / "stability-single-cpu" / "results.json").read_text())
    runs = single["runs"]
    falls = {r["seed"]: 100 * (max(r["curves"]["eval_accuracy"]) - r["greedy"]["accuracy"]) for r in runs}
    worst = max(falls, key=falls.get)
    norm = max(n for r in runs for n in r["curves"]["grad_norm"] if n is not None)
    valid = min(v for r in runs for v in r["curves"]["main_format_valid"] if v is not None)
    hops = [100 * r["greedy"]["accuracy_by_hops"]["2"] for r in runs]
    minutes = sum(r["train_seconds"] for r in runs) / 60
    said = [f"{falls[worst]:.1f} points (seed {worst})", f"(at most {norm:.2f})", f"was {100 * valid:.0f}%",
            f"({min(hops):.0f}-{max(hops):.0f}% of the two-hop", f"took {minutes:.0f} minutes together"]
    assert not unsaid(ROOT / "docs" / "results.md", said), unsaid(ROOT / "docs" / "results.md", said)
    assert norm < 1.0 and not [row for row in single["stability"] if row["collapsed"]]


def test_the_base_builds_on_validation_in_the_docs_are_the_committed_rows():
    """docs/base-model.md's table of builds on ``validation`` is base_builds.json's rows of that
    split, in order, every cell computed from them."""
    rows = [r for r in json.loads((ROOT / "benchmarks" / "results" / "base_builds.json").read_text())
            if r["split"] == "validation"]
    text = (ROOT / "docs" / "base-model.md").read_text()
    table = [line for line in text.split("\n### On the validation split\n", 1)[1].split("\n## ", 1)[0].splitlines()
             if line.startswith("| `--")]
    typed = [[c.strip().replace("*", "").rstrip("%") for c in line.split("|")[2:7]] for line in table]
    expected = [[f"{100 * r['multi_greedy']['accuracy']:.1f} / {100 * r['multi_T1']['accuracy']:.1f}",
                 f"{100 * r['single_greedy']['accuracy']:.1f} / {100 * r['single_T1']['accuracy']:.1f}",
                 *(f"{100 * r[k + '_greedy']:.1f} / {100 * r[k + '_T1']:.1f}" for k in ("visit", "visit_long", "return"))]
                for r in rows]
    assert len(rows) == 5 and typed == expected
    flags = {"--large-worlds": "large_worlds", "--demo-noise": "demo_noise", "--demo-hasty": "demo_hasty"}
    for line, r in zip(table, rows):  # each row's build command names values its config holds
        words = line.split("`")[1].split()
        assert all(f"{r['config'][flags[flag]]:g}" == value for flag, value in zip(words[::2], words[1::2])), line


def test_the_interval_check_can_fail():
    reports = "| a - mgrpo | large | 5 | -45.2 | [-55.7, -34.7] | 0.0625 |\n+1.5 [-1.2, +4.1] from step 80"
    prose = ("lower: -45.2 points [-55.7, -34.7], flat: +1.5 [-1.2, +4.1], typed: -3.0 [-5.0, -1.0]\n"
             "| -9.9 [-9.9, -9.9] |\nbroken: -7.0 points\n[-8.0, -6.0]")
    assert unreported_intervals(prose, reports) == ["-3.0 [-5.0, -1.0]", "-7.0 points\n[-8.0, -6.0]"]


def test_the_swap_adapters_tables_in_the_docs_are_what_the_committed_results_give():
    import json
    from swap_adapters import tables

    results = ROOT / "benchmarks" / "results" / "swap_adapters.json"
    rendered = tables(json.loads(results.read_text()))
    assert results.with_suffix(".md").read_text() == rendered
    rows = section_table_rows((ROOT / "docs" / "results.md").read_text(), "Which agent learned what")
    committed = set(rendered.splitlines())
    assert len(rows) >= 10 and not [row for row in rows if row not in committed]
    readme = [row for row in section_table_rows(README.read_text(), "Headline results")
              if row.startswith(("| greedy | ", "| T = ")) and "mgrpo" not in row]
    assert len(readme) >= 4 and not [row for row in readme if row not in committed]


def test_the_make_train_curves_in_the_docs_are_the_committed_run():
    import json

    lines = (ROOT / "benchmarks" / "results" / "make-train" / "metrics.jsonl").read_text().splitlines()
    evaluations = [m for m in map(json.loads, lines) if "eval/accuracy" in m]
    rows = section_table_rows((ROOT / "docs" / "results.md").read_text(), "make train")
    for label, key in (("greedy: ", "eval/accuracy"), ("sampled, T = 1: ", "eval_sampled/accuracy")):
        row = next(r for r in rows if r.startswith(f"| {label}"))
        typed = row.split("|")[1].strip()[len(label):]
        assert typed == ", ".join(f"{100 * m[key]:.1f}" for m in evaluations), label
        first, last = (f"{100 * m[key]:.1f}%" for m in (evaluations[0], evaluations[-1]))
        assert row.split("|")[2].strip() == first and row.split("|")[3].strip() == last


# ---------------------------------------------------------------------------
# Every name the docs cite is in the package


def cited_names(text: str) -> list[str]:
    """The backticked package names of a markdown text: ``module.attr`` where module is one of
    the package's modules (``step.learner_step``, ``mgrpo_ref.store.Store``), and the modules
    of ``python -m mgrpo_ref.<module>`` commands."""
    names = []
    for span in re.findall(r"`([^`\n]+)`", text):
        names += [f"{m}.__name__" for m in re.findall(r"python -m mgrpo_ref\.(\w+)", span)]
        name = span.split("(")[0].strip()
        name = name[len("mgrpo_ref."):] if name.startswith("mgrpo_ref.") else name
        if re.fullmatch(r"\w+\.py", name) and name[:-3] in MODULES:
            continue  # a module's file name: it exists
        if re.fullmatch(r"\w+(\.\w+)+", name) and name.split(".")[0] in MODULES:
            names.append(name)
    return names


def notebook_markdown(path: Path) -> str:
    import json

    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")


CITING = [README, *[p for p in DOCS if p.name != "history.md"]]  # the history keeps the names of its day


@pytest.mark.parametrize("path", [*CITING, *NOTEBOOKS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_package_name_the_docs_cite_is_in_the_package(path):
    text = notebook_markdown(path) if path.suffix == ".ipynb" else path.read_text()
    missing = [name for name in cited_names(text) if not resolves(name)]
    assert not missing, f"{path.name} cites names the package does not have: {missing}"


def test_the_cited_names_check_can_fail():
    text = "see `step.learner_step`, `mgrpo_ref.store.StoreChannel`, `step.no_such_thing(x)` and `a.b`;\n" \
           "run `python -m mgrpo_ref.nosuchmodule --help`"
    names = cited_names(text)
    assert names == ["step.learner_step", "store.StoreChannel", "step.no_such_thing", "nosuchmodule.__name__"]
    assert [resolves(n) for n in names] == [True, True, False, False]


def recorded_commands(value) -> list[str]:
    """Every string under a "command" or "runs" key of a result, at any depth."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k in ("command", "runs") and isinstance(v, str)]
        return found + [c for v in value.values() for c in recorded_commands(v)]
    if isinstance(value, list):
        return [c for v in value for c in recorded_commands(v)]
    return []


def test_recorded_commands_and_paths_in_the_results_are_relative_to_the_project():
    import json

    results = sorted((ROOT / "benchmarks" / "results").rglob("*.json"))
    commands = {path: recorded_commands(json.loads(path.read_text())) for path in results}
    assert sum(map(len, commands.values())) >= 10
    absolute = [(path.name, c) for path, found in commands.items() for c in found
                if re.search(r"(^|[\s=])/", c)]
    assert not absolute, f"absolute paths in recorded commands: {absolute}"
    assert recorded_commands({"a": [{"command": "python x.py --out=/abs"}]}) == ["python x.py --out=/abs"]


def test_the_real_model_levers_tables_are_what_their_profiles_give():
    from real_step_levers import render

    assert (REAL_MODEL / "levers.md").read_text() == render(REAL_MODEL / "levers.json"), \
        "run: python benchmarks/real_step_levers.py --arms (it rewrites levers.md)"


def test_every_row_of_the_real_step_section_comes_from_the_levers_and_speed_tables():
    heading = "6. Where a real step's time and memory go"
    rows = section_table_rows(REAL_MODEL_DOC.read_text(), heading)
    committed = [line for name in ("levers.md", "speed.md", "speed-bf16.md")
                 for line in (REAL_MODEL / name).read_text().splitlines() if line.startswith("| ")]
    assert len(rows) >= 8, f"real-model.md: no tables under '## {heading}'"
    assert rows[:len(committed)] == committed, \
        "real-model.md: the tables must be levers.md's, speed.md's, then speed-bf16.md's, whole"
    # then the decode cache's table (test_the_decode_cache_table_in_the_docs_is_the_committed_one), and the
    # bfloat16 table alone, whose figures test_the_bfloat16_figures_in_the_docs_are_the_committed_ones checks
    rest = rows[len(committed):]
    bf16 = next(i for i, row in enumerate(rest) if row.startswith("| measure |"))
    assert rest[0].startswith("| rows x context tokens |")
    # after it, the stopped rows' decode table and the step with both levers, whole
    # (test_the_two_levers_that_leave_the_numbers_are_said_as_measured)
    import bench_decode_cache  # benchmarks/bench_decode_cache.py (pytest's pythonpath)

    leave = bench_decode_cache.table(json.loads((REAL_MODEL / "decode_leave-64.json").read_text())).splitlines()
    both = (REAL_MODEL / "speed-rows.md").read_text().splitlines()
    calls = (REAL_MODEL / "rollout_calls.md").read_text().splitlines()
    floor = (REAL_MODEL / "step_floor.md").read_text().splitlines()
    assert rest[bf16 + 6:] == [row for row in leave + both + calls + floor if row.startswith("| ")]


def test_the_study_s_warm_up_time_in_the_docs_is_the_recorded_one():
    recorded = json.loads((ROOT / "benchmarks" / "results" / "real-study" / "warm_up.json").read_text())
    said = f"its warm-up took {recorded['warm_up_seconds'] / 60:.0f} minutes here"
    assert unsaid(REAL_MODEL_DOC, [said]) == []


STUDY = ROOT / "benchmarks" / "results" / "real-study"


def test_the_study_s_committed_report_is_what_its_files_give():
    import real_model_study as study

    assert (STUDY / study.REPORT).read_text() == study.report(STUDY), \
        "run: python benchmarks/real_model_study.py --report (it rewrites the study's README.md)"


def test_the_study_s_figures_in_the_readme_and_docs_are_the_committed_ones():
    """The study's four runs (M-GRPO and the control, each on seeds 0 and 1), as README.md and
    real-model.md state them, computed from their JSON."""
    from statistics import median

    import real_model_study as study
    from mgrpo_ref.intervals import paired_difference

    warm = json.loads((STUDY / "warm_up.json").read_text())
    runs = study.finished_runs(STUDY)
    run = runs["mgrpo", 0]
    lift = paired_difference(run["final"]["correct"], warm["correct"])
    planner = paired_difference(run["trained_main_warm_up_sub"]["correct"], warm["correct"])
    control = runs["frozen_sub", 0]["final"]
    versus = paired_difference(run["final"]["correct"], control["correct"])
    said = [f"from the warm-up's {100 * warm['accuracy']:.1f}% to {100 * run['final']['accuracy']:.1f}%",
            study.points(lift), study.points(planner), f"{study.points(versus)} points, {versus.verdict()}"]
    seconds = run["seconds_per_step"]
    in_docs = [f"a median of {median(seconds):.0f} s", f"a median of {median(seconds[:10]):.0f} s over the first ten",
               f"{median(seconds[-10:]):.0f} s over the last ten",
               f"({run['peak_mib']['main']:,.0f} MiB main, {run['peak_mib']['sub']:,.0f} MiB sub)",
               f"sub-agent calls per question from {warm['mean_sub_calls']:.2f} to {run['final']['mean_sub_calls']:.2f}",
               f"(one hop: {100 * run['final']['accuracy_by_hops']['1']:.1f}%)",
               f"ends at {100 * run['validation_curve'][str(run['config']['steps'])]:.1f}% on the validation split",
               f"reaches {100 * control['accuracy']:.1f}%, {study.points(paired_difference(control['correct'], warm['correct']))}",
               f"(two-hop questions {100 * run['final']['accuracy_by_hops']['2']:.1f}% and "
               f"{100 * control['accuracy_by_hops']['2']:.1f}% right"]
    in_readme = [f"gains as much ({100 * control['accuracy']:.1f}%)"]
    assert versus.verdict() == "no measurable difference"  # what "as much" says
    # the second seed: its lift, what its trained sub-agent adds (all on one-hop questions), the seeds together
    second = runs["mgrpo", 1]
    two, one_sub = second["final"], second["trained_main_warm_up_sub"]
    sub_adds = paired_difference(two["correct"], one_sub["correct"])
    together = paired_difference(study.seed_mean(runs, "mgrpo", [0, 1]), warm["correct"])
    said += [f"{100 * two['accuracy']:.1f}%, {study.points(paired_difference(two['correct'], warm['correct']))} points",
             f"adds {study.points(sub_adds)} points to its trained planner", f": {study.points(together)} points"]
    assert sub_adds.verdict() == "higher" and two["mean_sub_calls"] == 2  # "made up part of it", "twice on every question"
    assert all(two["accuracy_by_hops"][h] == one_sub["accuracy_by_hops"][h] for h in "234")  # "all on one-hop questions"
    validation = {arm: {int(k): d for k, d in runs[arm, 1]["validation_detail"].items()} for arm in study.ARMS}
    in_docs += [f"(two-hop questions {100 * two['accuracy_by_hops']['2']:.1f}% right)",
                f"({two['mean_sub_calls']:.2f} calls per question)",
                f"answers {100 * one_sub['accuracy_by_hops']['1']:.1f}% of the one-hop questions and gains "
                f"{study.points(paired_difference(one_sub['correct'], warm['correct']))}",
                f"sub-agent trained beside it, {100 * two['accuracy_by_hops']['1']:.1f}%",
                "(" + ", ".join(f"{100 * validation['mgrpo'][step]['accuracy_by_hops']['1']:.1f}% at step {step}"
                               for step in (40, 50, 60)) + ")",
                f"a median of {median(second['seconds_per_step']):.0f} s",
                f"({second['peak_mib']['main']:,.0f} MiB main, {second['peak_mib']['sub']:,.0f} MiB sub)"]
    # the control's second seed: above M-GRPO on it and over both seeds; the two runs the same until step 50
    control_two = runs["frozen_sub", 1]
    versus_two = paired_difference(two["correct"], control_two["final"]["correct"])
    versus_both = paired_difference(study.seed_mean(runs, "mgrpo", [0, 1]), study.seed_mean(runs, "frozen_sub", [0, 1]))
    control_both = paired_difference(study.seed_mean(runs, "frozen_sub", [0, 1]), warm["correct"])
    assert versus_two.verdict() == versus_both.verdict() == "lower"  # "behind on the other", "lower"
    said += [f"reaches {100 * control_two['final']['accuracy']:.1f}%", f"{study.points(versus_two)} points",
             study.points(versus_both)]
    in_readme += [f"over both seeds, {study.points(versus_both)}"]
    at_50 = [validation[arm][50] for arm in study.ARMS]
    assert all(d["accuracy_by_hops"] == at_50[0]["accuracy_by_hops"] for d in at_50)  # "went the same way for 50 steps"
    assert {validation[arm][step]["mean_sub_calls"] for arm in study.ARMS for step in (20, 30, 40, 50)} <= {2.0, 119 / 60}
    last = validation["frozen_sub"][60]
    equal = {arm: sum(runs[arm, 1]["main_equal_reward_frac"][50:60]) / 10 for arm in study.ARMS}
    in_docs += [f"reaches {100 * control_two['final']['accuracy']:.1f}%, "
                f"{study.points(paired_difference(control_two['final']['correct'], warm['correct']))} points",
                f"`frozen_sub` gains {study.points(control_both)} points and M-GRPO against it is {study.points(versus_both)}",
                f"both scored {100 * runs['mgrpo', 1]['validation_curve']['50']:.1f}%, "
                f"{100 * at_50[0]['accuracy_by_hops']['1']:.1f}% of the one-hop questions",
                f"(one hop {100 * last['accuracy_by_hops']['1']:.1f}% at step 60 on the validation split, "
                f"{100 * control_two['final']['accuracy_by_hops']['1']:.1f}% on the reported one, "
                f"{control_two['final']['mean_sub_calls']:.2f} calls per question)",
                f"({equal['mgrpo']:.0%} against the control's {equal['frozen_sub']:.0%})"]
    assert runs["mgrpo", 1]["validation_curve"]["50"] == runs["frozen_sub", 1]["validation_curve"]["50"]
    assert unsaid(README, said + in_readme) == []
    assert unsaid(REAL_MODEL_DOC, said + in_docs) == []


# ---------------------------------------------------------------------------
# Every citation resolves inside the repository (a clone has nothing beside it)

TEXT_FILES = [README, ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "environment.yml", ROOT / ".ci" / "run",
              *DOCS, *NOTEBOOKS, *sorted(PACKAGE.glob("*.py")),
              *[p for p in sorted((ROOT / "tests").glob("*.py")) if p.name != "test_docs.py"],  # not its own examples
              *sorted((ROOT / "benchmarks").glob("*.py")), *sorted((ROOT / "benchmarks").rglob("*.md"))]
MARKDOWN_FILE = re.compile(r"(?<![\w/.-])((?:\.\./|[\w-]+/)*[\w-]+\.md)\b")  # "docs/paper.md", "paper.md", or one a folder up
SIBLING = "../" + "shared"
"""The folder beside the repository that the project's notes live in; built from parts, so that
this file's own text cites nothing outside the repository."""
NOTES = "PAPER" + ".md"
"""The name of the notes file in that folder, built from parts for the same reason."""


def outside_references(path: Path, text: str) -> list[str]:
    """What a file cites outside the repository: a ``../`` path that does not lead to a file or
    folder of the repository, and a markdown file name that no file of the repository has
    (``NOTES`` of a sibling folder)."""
    found = []
    for match in re.finditer(r"(?<![\w.])(?:\.\./)+[\w.-]+", text):  # not ".../x", an elision
        target = (path.parent / match.group(0)).resolve()
        if not (target.exists() and target.is_relative_to(ROOT)):
            found.append(match.group(0))
    known = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    names = {k.rsplit("/", 1)[-1] for k in known}
    for match in MARKDOWN_FILE.finditer(text):
        cited = match.group(1)
        here = (path.parent / cited).resolve()
        if not (cited in known or cited.rsplit("/", 1)[-1] in names and not cited.startswith("..")
                or here.exists() and here.is_relative_to(ROOT)):
            found.append(cited)
    return found


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_citation_resolves_inside_the_repository(path):
    # Code may hold relative paths as data (a test's bad input); prose may not leave the repository.
    text = notebook_markdown(path) if path.suffix == ".ipynb" else "" if path.suffix == ".py" else path.read_text()
    if path.suffix in (".py", ".ipynb"):
        code = path.read_text()
        text += "\n" + "\n".join(MARKDOWN_FILE.findall(code) + re.findall(re.escape(SIBLING) + r"\b", code))
    outside = outside_references(path, text)
    assert not outside, f"{path.relative_to(ROOT)} cites what a clone does not have: {sorted(set(outside))}"


def test_the_citation_check_can_fail(tmp_path):
    up = "../"  # paths are built from parts: this file's own text cites nothing outside the repository
    text = f"see {NOTES} section 2, {SIBLING}/{NOTES}, {up}{up}elsewhere/notes and docs/paper.md section 3"
    assert outside_references(ROOT / "docs" / "glossary.md", text) == [SIBLING, f"{up}{up}elsewhere", NOTES,
                                                                       f"{SIBLING}/{NOTES}"]
    assert outside_references(ROOT / "docs" / "glossary.md", f"[x](paper.md) and {up}README.md") == []


# ---------------------------------------------------------------------------
# The docs describe the code as it is; its history is in docs/history.md alone

NARRATION = [
    r"\bthe (?:code|split|sampler|version|default) before\b",  # "against the code before"
    r"\bearlier (?:figures|numbers|results|code|runs|versions?|measurements)\b",
    r"\bused to be\b",
    r"\bpreviously\b",
    r"\bno longer\b",
    r"\bbefore\s*/\s*now\b",
    r"\bnow\s*/\s*before\b",
    r"\|\s*before\s*\|\s*now\s*\|",  # a table of before and now
    r"\b(?:than|as) before\b",
    r"\b(?:is|are) now (?:drawn|done|computed|run|taken|made|the default)\b",
    r"\bnow (?:draws|restores|uses|runs|holds|takes|computes|trains|logs|writes)\b",
    r"\b(?:old|new) code\b",
    r"\bthis session\b",
    r"\b(?:was|were|has been|have been) changed\b",
    r"\bwe changed\b",
    r"\bof that time\b",
    r"\b(?:was|were) made (?:faster|slower)\b",
    r"\bthe old (?:code|sampler|base|default|way|version)\b",
]
"""Phrases that tell how the code used to be rather than what it is (case-insensitive)."""

PRESENT_TENSE = [README, *[p for p in DOCS if p.name != "history.md"]]


def narration(text: str) -> list[str]:
    """The phrases of ``NARRATION`` in a text, in the order they appear, as "line N: phrase"; a
    space of a phrase matches any run of white space, a line break included (prose is wrapped)."""
    found = []
    for phrase in NARRATION:
        for match in re.finditer(phrase.replace(" ", r"\s+"), text, flags=re.IGNORECASE):
            found.append((match.start(), f"line {text.count(chr(10), 0, match.start()) + 1}: {match.group(0)!r}"))
    return [where for _, where in sorted(found)]


@pytest.mark.parametrize("path", PRESENT_TENSE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_docs_describe_the_code_as_it_is(path):
    found = narration(path.read_text())
    assert not found, (f"{path.relative_to(ROOT)} tells history (say it in the present tense, or move it to "
                       f"docs/history.md): {found}")


def test_the_narration_check_can_fail():
    told = ("The step against the code before: | measure | before | now | now / before |. Tokens are now drawn\n"
            "otherwise; it is faster than before and no longer slow; previously it took longer, and the earlier\n"
            "figures used to be higher. The benchmark now restores the adapter, of that time.")
    assert len(narration(told)) == 11
    assert narration(told)[0] == "line 1: 'the code before'" and "line 2: 'earlier\\nfigures'" in narration(told)
    present = ("Before the update, pi_old's log-probs are taken. A stale sub-agent trains on the step before's\n"
               "half, the rollouts of one step before. Now and then it delegates twice; earlier turns keep their\n"
               "log-probs; the seed is used to draw the questions. Memory before the first step.")
    assert narration(present) == []
    assert narration((ROOT / "docs" / "history.md").read_text()), "the history tells history"


@pytest.mark.parametrize("results", sorted(ROOT.glob("benchmarks/results/comparison-*/results.json")) + [RECIPES / "results.json"],
                         ids=lambda p: p.parent.name)
def test_every_field_of_a_comparison_s_results_is_documented(results):
    """docs/results.md's field-by-field section names every key a committed results.json
    holds: at the top, in a run, its curves and reports, and each row of the derived tables."""
    text = (ROOT / "docs" / "results.md").read_text()
    section = text.split("### results.json, field by field", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(\w+)`", section))
    data = json.loads(results.read_text())
    keys = set(data)
    for run in data["runs"]:
        keys |= set(run) | set(run["curves"]) | set(run["greedy"])
    for row in data.get("differences", []) + data.get("stability", []):
        keys |= set(row)
    if data.get("alignment_weights"):
        keys |= set(data["alignment_weights"])
    keys |= set(data.get("against", {}))
    for row in data.get("conclusions", []):
        keys |= set(row)
    assert keys - documented == set()


def test_the_readme_s_curriculum_trial_figures_are_its_committed_metrics():
    """The README's account of the real-model study's recipe trial (validation greedy accuracy
    at its first and last evaluation) is what the trial's committed metrics.jsonl holds."""
    trial = REAL_MODEL / "trials" / "mgrpo-w600-hops2-then-all-k8-lr1e-4"
    evals = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines() if "eval/accuracy" in line]
    first, last = evals[0], evals[-1]
    assert (first["step"], last["step"]) == (0, 60)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"then 20 on every question, took it from {100 * first['eval/accuracy']:.1f}% to "
            f"{100 * last['eval/accuracy']:.1f}%") in readme


def test_the_readme_s_current_step_times_are_the_committed_make_train_run_s():
    import json
    import statistics

    lines = (ROOT / "benchmarks" / "results" / "make-train" / "metrics.jsonl").read_text().splitlines()
    steps = [m for m in map(json.loads, lines) if "time/step_s" in m and m["step"] >= 1]
    first = steps[:10]

    def mean(records, key):
        return f"{statistics.fmean(m[f'time/{key}'] for m in records):.2f} s"

    readme = " ".join(README.read_text().split())
    assert (f"averages {mean(first, 'step_s')} a step over its first 10 steps ({mean(first, 'rollout_s')} of rollouts, "
            f"an update phase of {mean(first, 'update_wall_s')}) and {mean(steps, 'step_s')} over all {len(steps)}") in readme
