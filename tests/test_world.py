"""The world: seeded generation, committed data, question phrasing and its inverse."""

import filecmp
import re
from collections import Counter

import pytest

from mgrpo_ref import world as W


def test_same_seed_same_world_and_questions():
    a, b = W.generate_world(7), W.generate_world(7)
    assert a.entities == b.entities
    assert W.generate_questions(a, 30) == W.generate_questions(b, 30)


def test_new_seed_new_names_over_the_same_syllables():
    a, b = W.generate_world(7), W.generate_world(8)
    names_a, names_b = {e.name for e in a.entities}, {e.name for e in b.entities}
    assert len(names_a & names_b) < 0.1 * len(names_a)
    syllables = set(W.SYLLABLES)
    for e in a.entities:
        word = e.name.split()[0].lower()
        assert word[:2] in syllables or word[:3] in syllables, e.name


def test_committed_data_regenerates_bit_for_bit(tmp_path):
    written = W.write_data(tmp_path)
    assert written
    for path in written:
        committed = W.DATA_DIR / path.relative_to(tmp_path)
        assert filecmp.cmp(path, committed, shallow=False), f"{committed} differs from a fresh generation"


def test_world_shape():
    world = W.generate_world(3)
    kinds = Counter(e.kind for e in world.entities)
    assert set(kinds) == set(W.KINDS) and all(kinds[k] > 0 for k in W.KINDS)
    assert len({r.name for r in W.RELATIONS.values()}) >= 5
    for e in world.entities:
        # every fact is stated in the document and points at a real entity of the right kind
        for rel, obj in e.facts.items():
            assert W.RELATIONS[rel].subject == e.kind
            assert world.by_name[obj].kind == W.RELATIONS[rel].object
            assert W.read_fact(e.text, e.name, rel) == obj
    # a country's capital lies in that country
    for c in world.of_kind("country"):
        assert world.follow(c.facts["capital"], "country") == c.name


def test_confusable_twins_exist():
    world = W.generate_world(3)
    names = [e.name for e in world.entities if e.kind in ("person", "organisation")]
    # a twin shares all but one word with another name
    twins = [(a, b) for a in names for b in names if a < b
             and len(a.split()) == len(b.split())
             and sum(x != y for x, y in zip(a.split(), b.split())) == 1]
    assert len(twins) >= 5


def test_questions_have_consistent_gold_chains():
    world = W.generate_world(5)
    questions = W.generate_questions(world, 200)
    assert len({q.text for q in questions}) == 200
    for q in questions:
        entity = q.hops[0].subject
        for hop in q.hops:
            assert hop.subject == entity
            assert hop.answer == world.follow(entity, hop.relation)
            assert hop.question == W.question_text([hop.relation], entity)
            entity = hop.answer
        assert q.answer == entity
        relations, subject = W.parse_question(q.text)
        assert relations == [h.relation for h in q.hops] and subject == q.hops[0].subject


def test_hop_mix_is_a_parameter():
    world = W.generate_world(5)
    only_three = W.WorldConfig(hop_mix=(0, 0, 1, 0))
    assert {q.n_hops for q in W.generate_questions(world, 40, only_three)} == {3}
    counts = Counter(q.n_hops for q in W.generate_questions(world, 300))
    assert set(counts) == {1, 2, 3, 4}


def test_question_phrasing_round_trip():
    text = W.question_text(["works_for", "headquarters", "country"], "Bako Tumar")
    assert text == "What is the country of the headquarters of the employer of Bako Tumar?"
    assert W.parse_question(text) == (["works_for", "headquarters", "country"], "Bako Tumar")
    assert W.question_text(["founder"], "Velu Labs") == "Who is the founder of Velu Labs?"
    for bad in ("", "What is Bako?", "Why is the mentor of X?", "What is the colour of X?"):
        assert W.parse_question(bad) is None


def test_eval_world_is_held_out():
    assert W.EVAL_SEED not in W.TRAIN_SEEDS
    with pytest.raises(ValueError, match="held-out"):
        W.check_training_seed(W.EVAL_SEED)
    train = W.load_questions("train")
    evals = W.load_questions("eval")
    assert {q.world_seed for q in evals} == {W.EVAL_SEED}
    assert W.EVAL_SEED not in {q.world_seed for q in train}
    train_names = {e.name for s in W.TRAIN_SEEDS for e in W.load_world(s).entities}
    eval_names = {e.name for e in W.load_world(W.EVAL_SEED).entities}
    assert len(train_names & eval_names) < 0.1 * len(eval_names)


def test_the_six_held_out_worlds_are_never_trained_on_nor_in_the_base():
    from mgrpo_ref.pretrain import PretrainConfig

    questions = W.load_questions("eval_worlds")
    by_world = Counter(q.world_seed for q in questions)
    assert by_world == {seed: 40 for seed in W.EVAL_WORLD_SEEDS} and len(by_world) == 6
    # the worlds take turns, so the first six questions come from six worlds
    assert [q.world_seed for q in questions[:6]] == list(W.EVAL_WORLD_SEEDS)
    held_out = set(W.HELD_OUT_SEEDS)
    assert held_out.isdisjoint(W.TRAIN_SEEDS)
    base = PretrainConfig()  # the demonstration worlds the base learns from
    assert held_out.isdisjoint(range(base.first_world, base.first_world + base.n_worlds))
    for seed in W.HELD_OUT_SEEDS:
        with pytest.raises(ValueError, match="held-out"):
            W.check_training_seed(seed)


def test_corrupted_jsonl_gives_a_clear_error(tmp_path):
    (tmp_path / "questions").mkdir()
    (tmp_path / "questions" / "eval.jsonl").write_text('{"qid": "x"}\n{not json\n')
    with pytest.raises(ValueError, match=r"eval.jsonl:2: not valid JSON"):
        W.load_questions("eval", tmp_path)
    with pytest.raises(FileNotFoundError, match="no split 'dev'"):
        W.load_questions("dev", tmp_path)


def test_worlds_come_in_two_sizes_for_training_and_for_evaluation():
    sizes = {seed: len(W.load_world(seed).entities) for seed in (*W.TRAIN_SEEDS, *W.EVAL_WORLD_SEEDS)}
    large = {seed for seed in sizes if W.WORLD_SCALES.get(seed, 1) == W.LARGE_SCALE}
    assert large & set(W.TRAIN_SEEDS) and large & set(W.EVAL_WORLD_SEEDS)  # both splits hold both sizes
    assert set(W.TRAIN_SEEDS) - large and set(W.EVAL_WORLD_SEEDS) - large
    assert max(sizes[s] for s in sizes if s not in large) < 100 <= min(sizes[s] for s in large)
    for seed in large:  # most of a large world's document ids have three digits
        ids = [e.doc_id for e in W.load_world(seed).entities]
        assert sum(len(i) == 3 for i in ids) > len(ids) / 2
    config = W.WorldConfig().scaled(3)
    assert (config.n_persons, config.n_cities, config.hop_mix) == (96, 36, W.WorldConfig().hop_mix)
    with pytest.raises(ValueError, match="scale"):
        W.WorldConfig().scaled(0)


def test_a_share_of_the_base_demonstrations_comes_from_large_worlds(monkeypatch):
    """PretrainConfig.large_worlds: that share of the demonstration worlds, spread over the
    seeds, is generated at large_scale times the default size (and the rest at the default)."""
    from mgrpo_ref import pretrain as P

    made = []
    real = P.generate_world

    def recording(seed, config):
        made.append((seed, config.n_persons))
        return real(seed, config)

    monkeypatch.setattr(P, "generate_world", recording)
    demos = P.demonstrations(P.PretrainConfig(n_worlds=10, questions_per_world=2, large_worlds=0.2))
    persons = W.WorldConfig().n_persons
    assert [n for _, n in made] == [persons] * 4 + [3 * persons] + [persons] * 4 + [3 * persons]
    assert [s for s, _ in made] == list(range(2000, 2010)) and demos
    large_ids = {t.context for t in demos if re.search(r"<visit> \d{3}</visit>", t.context)}
    assert large_ids  # the only place the base sees three-digit ids
    made.clear()
    P.demonstrations(P.PretrainConfig(n_worlds=4, questions_per_world=2))  # one in a hundred: none of four
    assert [n for _, n in made] == [persons] * 4
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="large_worlds"):
            P.PretrainConfig(large_worlds=bad)


def test_the_validation_split_is_disjoint_from_every_world_training_or_reporting_uses():
    """Choices are made on ``validation``; ``eval_worlds`` is read only for results. The two,
    the training worlds and the base's demonstration worlds share no world, and validation has
    worlds of both sizes training uses."""
    from mgrpo_ref.pretrain import PretrainConfig
    from mgrpo_ref.sft import SFTConfig

    validation = W.load_questions("validation")
    by_world = Counter(q.world_seed for q in validation)
    assert by_world == {seed: 40 for seed in W.VALIDATION_SEEDS}
    assert [q.world_seed for q in validation[:6]] == list(W.VALIDATION_SEEDS)  # the worlds take turns
    seeds = set(W.VALIDATION_SEEDS)
    base = PretrainConfig()
    demonstrations = set(range(base.first_world, base.first_world + max(base.n_worlds, SFTConfig().n_worlds)))
    for other in (set(W.TRAIN_SEEDS), {W.EVAL_SEED}, set(W.EVAL_WORLD_SEEDS), demonstrations):
        assert seeds.isdisjoint(other)
    for seed in W.VALIDATION_SEEDS:
        with pytest.raises(ValueError, match="held-out"):
            W.check_training_seed(seed)
    sizes = {seed: len(W.load_world(seed).entities) for seed in W.VALIDATION_SEEDS}
    default, large = len(W.load_world(W.EVAL_WORLD_SEEDS[0]).entities), len(W.load_world(W.EVAL_WORLD_SEEDS[-1]).entities)
    assert sum(v > (default + large) / 2 for v in sizes.values()) == 3  # three large, three of the default size
    texts = {q.text for q in validation}
    assert texts.isdisjoint(q.text for q in W.load_questions("eval_worlds"))
