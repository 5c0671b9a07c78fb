"""The rollout viewer (viewer.py): records, the page, the CLI, and the page as a real
headless browser draws it (Debian's Chromium; skipped with the install command elsewhere)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from mgrpo_ref import viewer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def trajectory(rollout, call, advantage, copies, segments, reward=0.5):
    tokens, mask = [], []
    for source, words in segments:
        tokens += words
        mask += [int(source == "agent")] * len(words)
    return dict(question_index=0, rollout=rollout, call=call, qid="w1-q0", reward=reward, advantage=advantage,
                copies=copies, tokens=tokens, loss_mask=mask)


def records():
    """Question 0 of a step: rollout 0 right (A > 0) with two sub calls, one dropped; rollout 1 wrong."""
    question = ("prompt", ["<question>", " Who", "?", "</question>"])
    main = [trajectory(0, None, 1.5, 1, [question, ("agent", ["<delegate>", " Who", "</delegate>"]),
                                         ("env", ["<result>", " Kaun", "</result>"]), ("agent", ["<answer>", " Kaun", "</answer>"])]),
            trajectory(1, None, -1.5, 1, [question, ("agent", ["<answer>", " Rok", "</answer>"])])]
    sub = [trajectory(0, 0, 0.7, 3, [("prompt", ["<task>", " Who", "</task>"]), ("agent", ["<return>", " Kaun", "</return>"])]),
           trajectory(0, 1, -0.7, 0, [("prompt", ["<task>", " x", "</task>"]), ("agent", ["<return>", " y", "</return>"])])]
    return [viewer.learner_record("main", 7, main), viewer.learner_record("sub", 7, sub)]


def test_a_token_is_coloured_by_the_sign_and_size_of_its_advantage_or_greyed():
    assert "22,150,60" in viewer.colour(0.5, True) and "205,40,40" in viewer.colour(-0.5, True)
    assert viewer.colour(0.5, True) != viewer.colour(2.0, True) == viewer.colour(5.0, True)  # full strength at |A| = 2
    assert viewer.colour(1.0, False) == viewer.colour(-1.0, False) == "color:#9a9a9a"
    assert "background" in viewer.colour(0.0, True)  # trained with A = 0: drawn, but neutral


def test_the_page_holds_every_rollout_and_marks_trained_ignored_and_dropped_tokens():
    page = viewer.question_html(records(), 0)
    assert page.count(">rollout ") == 2 and "sub call 1 · R = 0.50 · A = +0.70 · x3" in page
    assert 'class="traj sub dropped"' in page and "sub call 2 · R = 0.50 · A = -0.70 · dropped" in page
    assert page.count('title="A = +1.500, weight 1"') == 6  # rollout 0's own tokens: delegate and answer turns
    assert page.count('title="A = +1.500, weight 0"') == 7  # its question and the inserted result
    assert page.count('title="A = +0.700, weight 3"') == 3  # a trajectory in three slots weighs three
    assert "&lt;delegate&gt;" in page and "<delegate>" not in page  # tokens are escaped text
    # what a notebook shows: the same content in one <div>, every style inline, no rule that
    # could restyle the notebook around it
    fragment = viewer.question_fragment(records(), 0)
    assert fragment.startswith('<div class="mgrpo-viewer"') and fragment in page
    assert "<style" not in fragment and "<body" not in fragment and "<html" not in fragment


def test_records_round_trip_and_bad_input_is_one_clear_error(tmp_path):
    for record in records():
        viewer.write_record(tmp_path, record)
    assert viewer.read_records(tmp_path, 7) == sorted(records(), key=lambda r: r["learner"])
    with pytest.raises(FileNotFoundError, match=r"no record of step 8; recorded steps: \[7\]"):
        viewer.read_records(tmp_path, 8)
    with pytest.raises(ValueError, match=r"no question 3 .*questions 0..0"):
        viewer.question_html(records(), 3)
    with pytest.raises(ValueError, match="3 tokens but 2 mask values"):
        viewer.learner_record("main", 1, [dict(tokens=["a", "b", "c"], loss_mask=[0, 1])])
    viewer.record_path(tmp_path, 9, "main").write_text("{not json")
    with pytest.raises(ValueError, match="not a record"):
        viewer.read_records(tmp_path, 9)


def test_the_cli_writes_a_page_or_says_in_one_line_what_is_wrong(tmp_path, capsys):
    for record in records():
        viewer.write_record(tmp_path, record)
    out = viewer.main([str(tmp_path), "--step", "7"])
    assert out == tmp_path / "records" / "step-0007-q0.html" and ">rollout 1<" in out.read_text()
    with pytest.raises(SystemExit) as exit_:
        viewer.main([str(tmp_path), "--step", "3"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m mgrpo_ref.viewer: error:") and "recorded steps: [7]" in err[-1]


def chromium(*args, cwd: Path) -> subprocess.CompletedProcess:
    """Headless Chromium as root on a machine with a closed network (flags from the library's env notes)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={cwd / 'profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium (.ci/run installs it)")
def test_a_real_browser_draws_the_page_with_green_red_and_grey_tokens(tmp_path):
    from PIL import Image

    page = tmp_path / "page.html"
    page.write_text(viewer.question_html(records(), 0))
    drawn = chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    assert drawn.returncode == 0, f"chromium failed: {drawn.stderr[-500:]}"
    dom = drawn.stdout
    n_tokens = sum(len(t["tokens"]) for r in records() for t in r["trajectories"])
    assert dom.count('class="tok"') == n_tokens + 3 and "rollout 1" in dom  # every token an element, and the legend
    shot = tmp_path / "shot.png"
    shot_taken = chromium(f"--screenshot={shot}", "--window-size=900,600", page.as_uri(), cwd=tmp_path)
    assert shot_taken.returncode == 0 and shot.exists(), f"chromium failed: {shot_taken.stderr[-500:]}"
    image = Image.open(shot).convert("RGB")
    pixels = [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]

    def count(test):
        return sum(1 for p in pixels if test(*p))

    green = count(lambda r, g, b: g > r + 40 and g > b + 40)
    red = count(lambda r, g, b: r > g + 60 and r > b + 60)
    grey_text = count(lambda r, g, b: 120 < r < 190 and abs(r - g) < 8 and abs(g - b) < 8)
    assert green > 500 and red > 500 and grey_text > 100, (green, red, grey_text)


def test_a_step_s_halves_become_records_in_the_order_training_numbers_them():
    """half_trajectories on a real step of the committed base: main rows in (question,
    rollout) order, sub trajectories in (question, rollout, call) order, each with the reward,
    advantage and slot count its half holds, and the tokens of the encoded trajectory."""
    from mgrpo_ref.config import TrainConfig
    from mgrpo_ref.episode import run_episodes
    from mgrpo_ref.policy import load_policy
    from mgrpo_ref.scripted import ScriptedAgent, TeacherNoise
    from mgrpo_ref.step import main_half, sub_half
    from mgrpo_ref.tools import ToolsByWorld
    from mgrpo_ref.world import load_questions

    cfg = TrainConfig(questions_per_step=2, rollouts=3, d_max=2)
    teacher = ScriptedAgent(TeacherNoise().scaled(1.5), seed=4)
    episodes = run_episodes(load_questions("train")[:2], ToolsByWorld(), {"main": teacher, "sub": teacher}, rollouts=3)
    policy = load_policy("data/base", quantization="none")
    main = main_half(episodes, cfg, policy)
    sub = sub_half(episodes, main.correct, cfg, policy, step=1)
    mains = viewer.half_trajectories(main, episodes, cfg.rollouts, policy)
    subs = viewer.half_trajectories(sub, episodes, cfg.rollouts, policy)
    assert [(t["question_index"], t["rollout"], t["call"]) for t in mains] == [(i // 3, i % 3, None) for i in range(6)]
    assert [(t["question_index"], t["rollout"], t["call"]) for t in subs] == [
        (i // 3, i % 3, c) for i, e in enumerate(episodes) for c in range(len(e.subs))]
    assert [t["copies"] for t in subs] == sub.copies.tolist() and sum(t["copies"] for t in subs) > 0
    assert [t["advantage"] for t in subs] == sub.advantages.tolist() and [t["reward"] for t in subs] == sub.rewards
    assert [t["advantage"] for t in mains] == main.advantages.tolist()
    flat = [s for e in episodes for s in e.subs]
    assert all("".join(t["tokens"]) == s.context for t, s in zip(subs, flat))
