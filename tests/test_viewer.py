"""The rollout viewer (viewer.py): records, the page, the CLI, and the page as a real
headless browser draws it (Debian's Chromium; skipped with the install command elsewhere)."""

import colorsys
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mgrpo_ref import viewer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def trajectory(rollout, call, advantage, copies, segments, reward=0.5, question=0, hops=2):
    tokens, mask = [], []
    for source, words in segments:
        tokens += words
        mask += [int(source == "agent")] * len(words)
    return dict(question_index=question, rollout=rollout, call=call, qid=f"w1-q{question}", hops=hops, reward=reward,
                advantage=advantage, copies=copies, tokens=tokens, loss_mask=mask)


def records():
    """Question 0 of a step: rollout 0 right (A > 0) with two sub calls, one dropped; rollout 1 wrong."""
    question = ("prompt", ["<question>", " Who", "?", "</question>"])
    main = [trajectory(0, None, 1.5, 1, [question, ("agent", ["<delegate>", " Who", "</delegate>"]),
                                         ("env", ["<result>", " Kaun", "</result>"]), ("agent", ["<answer>", " Kaun", "</answer>"])]),
            trajectory(1, None, -1.5, 1, [question, ("agent", ["<answer>", " Rok", "</answer>"])])]
    sub = [trajectory(0, 0, 0.7, 3, [("prompt", ["<task>", " Who", "</task>"]), ("agent", ["<return>", " Kaun", "</return>"])]),
           trajectory(0, 1, -0.7, 0, [("prompt", ["<task>", " x", "</task>"]), ("agent", ["<return>", " y", "</return>"])])]
    return [viewer.learner_record("main", 7, main), viewer.learner_record("sub", 7, sub)]


def lightness(rgb):
    """CIE L* of an sRGB colour: 100 for white, lower for a stronger colour."""
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    y = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return 116 * (y ** (1 / 3) if y > 216 / 24389 else (24389 / 27 * y + 16) / 116) - 16


def hue(rgb):
    """The hue of an sRGB colour in degrees (blue about 200, orange about 25)."""
    return 360 * colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0]


def test_plus_and_minus_a_are_blue_and_orange_of_the_same_strength_and_0_is_white():
    for a in (0.1, 0.5, 1.0, 1.7, 2.0, 3.0):
        up, down = viewer.advantage_rgb(a), viewer.advantage_rgb(-a)
        assert 190 < hue(up) < 215 and 15 < hue(down) < 35, (a, up, down)  # blue and orange: not red-green
        assert abs(lightness(up) - lightness(down)) < 1, (a, up, down)  # equally strong either side
    assert viewer.advantage_rgb(0.0) == viewer.advantage_rgb(-0.0) == (255, 255, 255)  # neutral: white
    assert "background:rgb(255, 255, 255)" in viewer.colour(0.0, True)  # trained with A = 0: drawn, but neutral


def test_a_larger_advantage_is_a_stronger_colour_up_to_the_clip():
    for sign in (1, -1):
        drawn = [lightness(viewer.advantage_rgb(sign * a)) for a in (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)]
        assert all(lighter > darker for lighter, darker in zip(drawn, drawn[1:])), drawn
        full = viewer.advantage_rgb(sign * viewer.FULL_STRENGTH)
        assert viewer.advantage_rgb(sign * 5.0) == full == (viewer.POSITIVE if sign > 0 else viewer.NEGATIVE)


def test_untrained_tokens_are_grey_text_with_no_background():
    assert viewer.colour(1.0, False) == viewer.colour(-1.0, False) == viewer.colour(0.0, False) == "color:#9a9a9a"
    page = viewer.question_html(records(), 0)
    spans = re.findall(r'<span class="tok" style="([^"]*)" title="A = [^,]*, weight (\d+)"', page)
    assert len(spans) == sum(len(t["tokens"]) for r in records() for t in r["trajectories"])
    for style, weight in spans:  # the question, the inserted result, a dropped trajectory: weight 0, no colour
        assert (style == "color:#9a9a9a") == (weight == "0") and ("background" in style) == (weight != "0")


def test_the_page_has_a_legend_with_the_colour_bar_and_its_ticks():
    fragment = viewer.question_fragment(records(), 0)
    legend = re.search(r'<div class="legend".*?</div></div></div>', fragment).group(0)
    assert fragment.index(legend) < fragment.index(">rollout 0<")  # read before the tokens
    assert "the advantage A the token was trained with" in legend and "Blue: A &gt; 0" in legend
    assert "orange: A &lt; 0" in legend and "full strength at |A| &ge; 2" in legend
    assert "not trained (loss mask 0" in legend and "grey text" in legend
    assert re.findall(r'class="tick"[^>]*>([^<]*)<', legend) == ["&le; -2", "-1", "0", "+1", "&ge; +2"]
    ticks = {0: -2.0, 25: -1.0, 50: 0.0, 75: 1.0, 100: 2.0}  # the bar's colour at each tick is a token's of that A
    assert all(f"rgb{viewer.advantage_rgb(a)} {at}%" in legend for at, a in ticks.items())
    assert 'class="tok"' not in legend  # every tok span is a token of the rollouts


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


def question(index, hops, answers, rewards=None):
    """A question's main trajectories, one per rollout, answering ``answers[k]``: equal answers are
    identical transcripts; the reward is 1 for the first answer and 0 for any other unless given."""
    rewards = rewards or [float(answer == answers[0]) for answer in answers]
    return [trajectory(k, None, 0.0, 1, [("prompt", ["<question>", " Who", "?", "</question>"]),
                                         ("agent", ["<answer>", f" {answer}", "</answer>"])],
                       reward=reward, question=index, hops=hops)
            for k, (answer, reward) in enumerate(zip(answers, rewards))]


def step_records(*questions, subs=()):
    return [viewer.learner_record("main", 7, [t for q in questions for t in q]),
            viewer.learner_record("sub", 7, list(subs))]


ONE_HOP_VARIED = dict(hops=1, answers=["Kaun", "Rok", "Lia", "Mo"])
MULTI_HOP_SAME = dict(hops=3, answers=["Kaun"] * 4)
MULTI_HOP_VARIED = dict(hops=2, answers=["Kaun", "Rok", "Rok", "Rok"])
MULTI_HOP_VARIED_MORE_SPREAD = dict(hops=2, answers=["Kaun", "Kaun", "Rok", "Rok"])


def test_pick_question_prefers_a_multi_hop_question_whose_rollouts_differ():
    # question 1's sub trajectories differ, but a question's variety is its main transcripts'
    subs = [trajectory(k, 0, 0.0, 1, [("agent", ["<return>", f" {k}", "</return>"])], question=1, hops=3)
            for k in range(4)]
    records = step_records(question(0, **ONE_HOP_VARIED), question(1, **MULTI_HOP_SAME), question(2, **MULTI_HOP_VARIED),
                           subs=subs)
    assert viewer.pick_question(records) == 2  # not the most varied one-hop, not the identical multi-hop
    with_spread = step_records(question(0, **ONE_HOP_VARIED), question(1, **MULTI_HOP_VARIED),
                               question(2, **MULTI_HOP_VARIED_MORE_SPREAD))
    assert viewer.pick_question(with_spread) == 2  # two distinct transcripts each: the wider spread of rewards
    most_distinct = dict(hops=2, answers=["Kaun", "Rok", "Lia", "Lia"], rewards=[1.0, 0.0, 0.0, 0.0])
    fewer_distinct = question(0, **MULTI_HOP_VARIED_MORE_SPREAD)  # the wider spread, but two transcripts to three
    assert viewer.pick_question(step_records(fewer_distinct, question(1, **most_distinct))) == 1
    assert viewer.pick_question(records, min_hops=3) == 0  # no varied 3-hop question: the fallback
    # rollouts that all differ in text but earn one reward are all white (A = 0): fewer distinct
    # transcripts whose rewards differ are drawn instead
    all_white = dict(hops=2, answers=["Kaun", "Rok", "Lia", "Mo"], rewards=[0.1] * 4)
    assert viewer.pick_question(step_records(question(0, **all_white), question(1, **MULTI_HOP_VARIED))) == 1


def test_pick_question_falls_back_to_the_most_varied_then_to_a_multi_hop_then_to_the_first():
    one_hop_same = dict(hops=1, answers=["Kaun"] * 4)
    assert viewer.pick_question(step_records(question(0, **MULTI_HOP_SAME), question(1, **ONE_HOP_VARIED))) == 1
    assert viewer.pick_question(step_records(question(0, **one_hop_same), question(1, **MULTI_HOP_SAME))) == 1
    assert viewer.pick_question(step_records(question(0, **one_hop_same), question(1, **one_hop_same))) == 0
    # records written before trajectories carried their hop count: the most varied question
    old = step_records(question(0, **MULTI_HOP_VARIED), question(1, **ONE_HOP_VARIED))
    for t in old[0]["trajectories"]:
        del t["hops"]
    assert viewer.pick_question(old) == 1
    with pytest.raises(ValueError, match="no main trajectory"):
        viewer.pick_question(step_records())


def test_without_a_question_the_cli_and_show_draw_the_picked_one(tmp_path):
    for record in step_records(question(0, hops=1, answers=["Kaun"] * 4), question(1, **MULTI_HOP_VARIED)):
        viewer.write_record(tmp_path, record)
    out = viewer.main([str(tmp_path), "--step", "7"])
    assert out == tmp_path / "records" / "step-0007-q1.html" and "question 1 (w1-q1, 2 hops)" in out.read_text()
    assert viewer.main([str(tmp_path), "--step", "7", "--question", "0"]).name == "step-0007-q0.html"
    pytest.importorskip("IPython")
    assert "question 1 (w1-q1, 2 hops)" in viewer.show(tmp_path, 7).data


def chromium(*args, cwd: Path) -> subprocess.CompletedProcess:
    """Headless Chromium as root on a machine with a closed network (flags from the library's env notes)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={cwd / 'profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium (.ci/run installs it)")
def test_a_real_browser_draws_the_page_with_blue_orange_and_grey_tokens(tmp_path):
    from PIL import Image

    page = tmp_path / "page.html"
    page.write_text(viewer.question_html(records(), 0))
    drawn = chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    assert drawn.returncode == 0, f"chromium failed: {drawn.stderr[-500:]}"
    dom = drawn.stdout
    n_tokens = sum(len(t["tokens"]) for r in records() for t in r["trajectories"])
    assert dom.count('class="tok"') == n_tokens and "rollout 1" in dom and 'class="colour-bar"' in dom  # every token an element
    shot = tmp_path / "shot.png"
    shot_taken = chromium(f"--screenshot={shot}", "--window-size=900,600", page.as_uri(), cwd=tmp_path)
    assert shot_taken.returncode == 0 and shot.exists(), f"chromium failed: {shot_taken.stderr[-500:]}"
    image = Image.open(shot).convert("RGB")
    pixels = [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]

    def count(test):
        return sum(1 for p in pixels if test(*p))

    blue = count(lambda r, g, b: b > r + 40 and b > g + 10)
    orange = count(lambda r, g, b: r > g + 50 and g > b + 30)
    grey_text = count(lambda r, g, b: 120 < r < 190 and abs(r - g) < 8 and abs(g - b) < 8)
    assert blue > 500 and orange > 500 and grey_text > 100, (blue, orange, grey_text)


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
    assert all(t["hops"] == episodes[t["question_index"] * 3].question.n_hops for t in mains + subs)
    flat = [s for e in episodes for s in e.subs]
    assert all("".join(t["tokens"]) == s.context for t, s in zip(subs, flat))
