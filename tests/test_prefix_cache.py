"""Prefix caching (prefix_cache.py): the layout by hand, which prefix is reused and what is
kept, the cache emptied when the weights change, and generation with it equal to
transformers' ``generate`` on whole contexts, greedy and sampled, on our base."""

import pytest
import torch

from mgrpo_ref.episode import run_episodes
from mgrpo_ref.policy import SamplingSettings, load_policy
from mgrpo_ref.prefix_cache import (Entry, PrefixCache, as_model_cache, from_model_cache, batch_layout, forward,
                                    positions_of, select_rows, stack_prefixes, with_room)
from mgrpo_ref.tools import ToolsByWorld
from mgrpo_ref.world import load_questions

BASE = "data/base"


def entry(ids, context_tokens, heads=1, size=2):
    """An entry whose keys and values are numbers that name their position: easy to follow."""
    t = torch.arange(len(ids), dtype=torch.float32)[None, :, None].expand(heads, len(ids), size)
    return Entry(torch.tensor(ids), context_tokens, [(t.clone(), -t.clone())])


def test_the_layout_ends_every_prefix_at_column_c_and_every_context_at_c_plus_s():
    # Row 0 reuses 2 of its 5 tokens, row 1 nothing of its 3: C = 2, S = max(3, 3) = 3.
    c, s, mask = batch_layout([2, 0], [5, 3])
    assert (c, s) == (2, 3)
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert positions_of(mask).tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]
    # Row 0 reuses 1 of 2 tokens, row 1 3 of 6: a hole between row 0's prefix and its new token.
    c, s, mask = batch_layout([1, 3], [2, 6])
    assert (c, s) == (3, 3)
    assert mask.tolist() == [[0, 0, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]]
    assert positions_of(mask)[0, -1] == 1  # row 0's new token sits at position 1 of its own context


def test_each_context_reuses_its_longest_cached_prefix_and_leaves_one_token_to_encode():
    cache = PrefixCache(1)
    short, long = entry([1, 2, 3], 2), entry([1, 2, 3, 4, 5], 4)
    cache.entries = [short, long]
    found = cache.find([torch.tensor([1, 2, 3, 4, 9]), torch.tensor([1, 2, 3, 4, 5]), torch.tensor([8, 1]),
                        torch.tensor([1, 2, 7])])
    assert found[0] == (4, long)
    assert found[1] == (4, long)  # all five are cached, but the last must be encoded for its logits
    assert found[2] == (0, None)  # nothing in common at the start: nothing reused
    assert found[3][0] == 2  # a shared beginning of another conversation serves too
    stacked = stack_prefixes(found[:3], 4)  # per layer (M, J, C, E), left-padded with zeros
    keys = stacked[0][0][:, 0, :, 0]  # (M, C)
    assert keys.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 0, 0, 0]]


def test_a_conversation_that_went_on_replaces_its_entry_and_one_that_lent_a_beginning_stays():
    cache = PrefixCache(1)
    mine, shared, old = entry([1, 2, 3, 4], 3), entry([1, 2, 9, 9], 3), entry([5, 6], 1)
    cache.entries = [old, mine, shared]
    new = entry([1, 2, 3, 4, 5, 6], 5)
    # The row went on from its own entry (reused its whole context) and a second row borrowed
    # only the beginning [1, 2] that ``shared`` has in common with it.
    cache.keep([new], [(4, mine), (2, shared)])
    assert cache.entries == [old, shared, new]  # ``mine`` replaced; ``shared`` now the most recently used but one
    cache.max_bytes = new.nbytes + shared.nbytes
    cache.keep([], [])
    assert cache.entries == [shared, new]  # over budget: the least recently used went first


def test_a_cache_needs_room():
    with pytest.raises(ValueError, match="max_mib"):
        PrefixCache(0)


def test_any_change_of_the_weights_empties_the_cache():
    model = torch.nn.Linear(2, 2)
    cache = PrefixCache(1)
    cache.check_weights(model)
    cache.entries = [entry([1, 2], 1)]
    cache.check_weights(model)
    assert cache.entries  # nothing changed
    model(torch.ones(1, 2)).sum().backward()
    torch.optim.AdamW(model.parameters(), lr=0.1).step()
    cache.check_weights(model)
    assert not cache.entries
    cache.entries = [entry([1, 2], 1)]
    model.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    cache.check_weights(model)
    assert not cache.entries


@pytest.fixture(scope="module")
def model():
    return load_policy(BASE, quantization="none", trainable=False, device="cpu").model


def test_keys_and_values_taken_from_the_cache_give_the_logits_of_the_whole_context(model):
    torch.manual_seed(0)
    a, b = torch.randint(10, 200, (12,)), torch.randint(10, 200, (7,))
    with torch.no_grad():
        whole = [model(input_ids=x[None], use_cache=False).logits[0, -1] for x in (a, b)]
        # Each row's first tokens encoded alone, as an earlier turn would have, then kept.
        kept = []
        for x, n in ((a, 9), (b, 3)):
            _, past = forward(model, x[None, :n], torch.ones(1, n, dtype=torch.long), torch.arange(n)[None], None)
            kept.append(Entry(x[:n], n, [(k[0], v[0]) for k, v in from_model_cache(past)]))
        found = [(9, kept[0]), (3, kept[1])]
        c, s, mask = batch_layout([9, 3], [12, 7])
        new = torch.zeros(2, s, dtype=torch.long)
        new[0, s - 3:], new[1, s - 4:] = a[9:], b[3:]
        logits, _ = forward(model, new, mask, positions_of(mask)[:, c:], as_model_cache(stack_prefixes(found, c)))
    for row in range(2):
        torch.testing.assert_close(logits[row], whole[row], rtol=1e-4, atol=1e-4)


def test_a_cache_with_room_decodes_what_the_model_s_own_cache_does_writing_in_place(model):
    """Six greedy tokens after a 9-token context, two rows, one of them taken twice: the model's
    own cache (it concatenates every pass) against ``with_room`` with room for four, so that
    the last passes also show it growing. Same logits; within its room a layer's keys stay in
    one tensor."""
    torch.manual_seed(0)
    ids = torch.randint(10, 200, (2, 9))
    rows = torch.tensor([0, 1, 1])
    outs = {}
    for roomy in (False, True):
        mask, logits, seen = torch.ones(3, 9, dtype=torch.long), [], []
        with torch.no_grad():
            first, past = forward(model, ids, mask[:2], torch.arange(9).expand(2, 9), None)
            past = with_room(past, 4, rows) if roomy else select_rows(past, rows)
            last, position = first[rows], torch.full((3, 1), 8)
            for _ in range(6):
                token = last.argmax(-1)
                mask, position = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1), position + 1
                last, past = forward(model, token[:, None], mask, position, past)
                logits.append(last)
                seen.append(from_model_cache(past)[0][0].data_ptr())
        outs[roomy] = torch.stack(logits), from_model_cache(past), seen
    (plain, plain_kv, _), (roomy, roomy_kv, ptrs) = outs[False], outs[True]
    torch.testing.assert_close(roomy, plain, rtol=0, atol=0)
    for (k, v), (k0, v0) in zip(roomy_kv, plain_kv):
        assert k.shape == k0.shape == (3, k0.shape[1], 15, k0.shape[3])
        torch.testing.assert_close((k, v), (k0, v0), rtol=0, atol=0)
    assert len(set(ptrs[:4])) == 1 and ptrs[4] != ptrs[3]  # room for four: the fifth token grows the tensors


def test_rows_that_stopped_leave_the_batch_and_the_others_write_what_they_would_have(model, monkeypatch):
    """Six contexts, row i stopping after ``stop_after[i]`` tokens. Once half the rows the batch
    holds have stopped, they leave it (their entries kept first): the passes shrink from 6 rows
    to 2, then 1. Every row's turn and kept keys and values are those of the same call in which
    no row stops, cut at the row's stop."""
    from mgrpo_ref import prefix_cache as module

    torch.manual_seed(0)
    contexts = torch.randint(10, 200, (6, 9)).tolist()
    stop_after = torch.tensor([1, 2, 3, 3, 5, 12])
    rows_per_pass, one_pass = [], module.forward
    monkeypatch.setattr(module, "forward", lambda m, ids, *a: rows_per_pass.append(len(ids)) or one_pass(m, ids, *a))

    def greedy(logits):
        return logits.argmax(-1)

    calls = {}
    for name, stops in (("stopping", lambda written, t: stop_after <= t + 1),
                        ("never", lambda written, t: torch.zeros(len(written), dtype=torch.bool))):
        rows_per_pass.clear()
        cache = PrefixCache(64)
        with torch.no_grad():
            turns = module.generate(model, cache, contexts, greedy, stops, 12, pad_id=0)
        calls[name] = turns, cache.entries, list(rows_per_pass)
    (turns, entries, passes), (whole, whole_entries, whole_passes) = calls["stopping"], calls["never"]
    assert passes == [6, 6, 6, 2, 2, 1, 1, 1, 1, 1, 1, 1] and whole_passes == [6] * 12
    assert turns == [w[:n] for w, n in zip(whole, stop_after.tolist())]
    for e, w, n in zip(entries, whole_entries, stop_after.tolist()):
        assert e.context_tokens == w.context_tokens == 9 and torch.equal(e.ids, w.ids[:9 + n - 1])
        for (k, v), (k0, v0) in zip(e.kv, w.kv):
            torch.testing.assert_close((k, v), (k0[:, :9 + n - 1], v0[:, :9 + n - 1]), rtol=1e-5, atol=1e-5)


def test_rows_that_leave_write_what_rows_that_stay_write_greedy_and_sampled_on_a_kept_cache(model, monkeypatch):
    """``let_go`` on, and off (every row stays to the end of the call): two calls on one cache,
    the second continuing the first's conversations, so that it reuses their prefixes (of
    different lengths, left-padded), greedy and then sampled from one seeded generator. The
    same turns in both, and the same entries up to float rounding; only the passes shrink."""
    from mgrpo_ref import prefix_cache as module
    from mgrpo_ref.policy import sample_by_inverse_cdf

    gen = torch.Generator().manual_seed(1)
    contexts = [torch.randint(10, 200, (n,), generator=gen).tolist() for n in (5, 9, 7, 12, 6, 8)]
    observations = torch.randint(10, 200, (6, 3), generator=gen).tolist()  # what each conversation gets next
    stop_after = torch.tensor([2, 7, 1, 3, 9, 4])
    rows_per_pass, one_pass, let_go = [], module.forward, module.let_go
    monkeypatch.setattr(module, "forward", lambda m, ids, *a: rows_per_pass.append(len(ids)) or one_pass(m, ids, *a))

    def stops(written, t):
        return stop_after <= t + 1

    runs = {}
    for arm in ("leave", "stay"):
        monkeypatch.setattr(module, "let_go", let_go if arm == "leave" else lambda stopped: False)
        cache, draws, passes = PrefixCache(64), torch.Generator().manual_seed(5), []
        with torch.no_grad():
            rows_per_pass.clear()
            first = module.generate(model, cache, contexts, lambda logits: logits.argmax(-1), stops, 10, pad_id=0)
            passes.append(list(rows_per_pass))
            later = [c + turn + o for c, turn, o in zip(contexts, first, observations)]
            rows_per_pass.clear()
            second = module.generate(model, cache, later, lambda logits: sample_by_inverse_cdf(logits, draws), stops, 10,
                                     pad_id=0)
            passes.append(list(rows_per_pass))
        runs[arm] = first, second, cache, passes
    (first, second, cache, passes), (first0, second0, cache0, passes0) = runs["leave"], runs["stay"]
    assert first == first0 and second == second0
    assert [len(t) for t in first] == stop_after.tolist() == [len(t) for t in second]
    assert cache.reused_tokens == cache0.reused_tokens > sum(len(c) for c in contexts)  # the second call reused them
    assert all(min(p) < 6 for p in passes) and all(set(p) == {6} for p in passes0)
    assert len(cache.entries) == len(cache0.entries)
    for e, e0 in zip(cache.entries, cache0.entries):
        assert torch.equal(e.ids, e0.ids) and e.context_tokens == e0.context_tokens
        for (k, v), (k0, v0) in zip(e.kv, e0.kv):
            torch.testing.assert_close((k, v), (k0, v0), rtol=1e-5, atol=1e-5)


def test_a_cache_with_a_sliding_window_keeps_its_layers_and_only_selects_rows():
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicSlidingWindowLayer

    cache = DynamicCache()
    cache.layers.append(DynamicSlidingWindowLayer(sliding_window=4))
    keys = torch.arange(2 * 6, dtype=torch.float32).reshape(2, 1, 6, 1)
    cache.layers[0].update(keys, -keys)
    before = (cache.layers[0].get_seq_length(), cache.layers[0].get_mask_sizes(1))
    out = with_room(cache, 8, torch.tensor([1, 1, 0]))
    layer = out.layers[0]
    assert type(layer) is DynamicSlidingWindowLayer and (layer.get_seq_length(), layer.get_mask_sizes(1)) == before
    assert torch.equal(layer.keys[:, 0, :, 0], keys[[1, 1, 0], 0, -3:, 0])  # the window's last tokens, rows selected


def test_a_roomy_layer_after_rows_are_selected_cropped_or_reset_stays_right():
    """Whatever replaced or cut a layer's keys, the next update appends to what the layer
    holds then, as transformers' own layer would."""
    from transformers.cache_utils import DynamicLayer

    from mgrpo_ref.prefix_cache import _roomy_layer

    keys = torch.arange(3 * 5, dtype=torch.float32).reshape(3, 1, 5, 1)
    for change, rows in (("select", 2), ("slice", 2), ("crop", 3), ("reset", 3), ("dtype", 2)):
        roomy, plain = _roomy_layer()(keys, -keys, 4), DynamicLayer()
        plain.update(keys, -keys)
        for layer in (roomy, plain):
            if change == "select":
                layer.batch_select_indices(torch.tensor([2, 0]))
            elif change == "slice":
                layer.batch_select_indices(slice(1, 3))
            elif change == "crop":  # the keys stay a view of the room, two positions shorter
                layer.crop(-2)
            elif change == "reset":
                layer.reset()
            else:
                layer.batch_select_indices(torch.tensor([0, 1]))
        states = torch.full((rows, 1, 1, 1), 99.0, dtype=torch.float64 if change == "dtype" else torch.float32)
        got, expected = roomy.update(states, -states), plain.update(states, -states)
        assert got[0].dtype == expected[0].dtype and torch.equal(got[0], expected[0]), change
        assert torch.equal(got[1], expected[1]) and roomy.get_seq_length() == plain.get_seq_length(), change


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_episodes_with_a_prefix_cache_are_the_episodes_without_one(temperature):
    questions = load_questions("validation")[:6]
    runs = {}
    for mib in (0, 256):
        policy = load_policy(BASE, quantization="none", trainable=False, device="cpu", seed=3, prefix_cache_mib=mib,
                             sampling=SamplingSettings(temperature, 1.0, 48))
        runs[mib] = (run_episodes(questions, ToolsByWorld(), {"main": policy, "sub": policy}, rollouts=3), policy)
    (plain, _), (cached, policy) = runs[0], runs[256]
    assert [e.to_dict() for e in cached] == [e.to_dict() for e in plain]
    assert any(e.subs and e.main.n_turns > 1 for e in plain)  # conversations of several turns, and sub-agents
    cache = policy.prefix_cache
    assert cache.reused_tokens > cache.encoded_tokens / 2  # most of a later turn's context came from the cache
    assert cache.shared_rows >= 6 * 2  # at least each question's rollouts past the first, at their first turn
    assert 0 < cache.nbytes <= 256 * 2**20


def test_a_small_budget_keeps_the_cache_within_it_and_changes_no_turn():
    questions = load_questions("validation")[:4]
    turns = {}
    budget = 1.0  # MiB: a handful of this base's conversations
    for mib in (0, budget):
        policy = load_policy(BASE, quantization="none", trainable=False, device="cpu", prefix_cache_mib=mib,
                             sampling=SamplingSettings(0.0, 1.0, 48))
        turns[mib] = [e.to_dict() for e in run_episodes(questions, ToolsByWorld(), {"main": policy, "sub": policy},
                                                       rollouts=4)]
    cache = policy.prefix_cache
    assert cache.evicted > 0 and cache.reused_tokens > 0  # it had to drop entries, and still reused some
    assert cache.nbytes <= budget * 2**20
    assert turns[budget] == turns[0]


def test_the_decode_cache_benchmark_times_both_arms_on_equal_work(tmp_path):
    import json

    import bench_decode_cache  # benchmarks/bench_decode_cache.py (pytest's pythonpath)

    out = tmp_path / "decode.json"
    bench_decode_cache.main(["--base", BASE, "--rows", "3", "--context", "12", "--new-tokens", "5", "--repeats", "2",
                             "--out", str(out)])
    (shape,) = json.loads(out.read_text())["shapes"]
    assert (shape["rows"], shape["context_tokens"], shape["same_tokens"]) == (3, 12, True)
    assert all(len(shape["seconds"][arm]) == 2 for arm in ("on", "off"))
    assert shape["ratio_on_over_off"] == shape["median_s"]["on"] / shape["median_s"]["off"]
    with pytest.raises(SystemExit, match="no model at"):
        bench_decode_cache.main(["--base", str(tmp_path / "nowhere"), "--out", str(out)])
    # The other lever: rows that stopped leaving the batch, on and off, the same tokens.
    bench_decode_cache.main(["--base", BASE, "--lever", "leave", "--rows", "6", "--context", "12", "--new-tokens", "9",
                             "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    (shape,) = result["shapes"]
    assert result["lever"] == "leave" and shape["same_tokens"] and len(shape["stop_after"]) == 6
    assert all(1 <= n <= 9 for n in shape["stop_after"]) and len(set(shape["stop_after"])) > 1
    assert "stopped rows leave (s)" in bench_decode_cache.table(result)


def test_the_rollout_calls_benchmark_records_every_call_of_one_step(tmp_path):
    import json

    import rollout_calls  # benchmarks/rollout_calls.py (pytest's pythonpath)

    out = tmp_path / "calls.json"
    rollout_calls.main(["--base", BASE, "--pass-rows", "1", "3", "--pass-context", "8", "--repeats", "2",
                        "--out", str(out), "questions_per_step=2", "rollouts=3"])
    result = json.loads(out.read_text())
    calls, s = result["calls"], result["summary"]
    assert result["episodes"] == 6 and calls[0]["role"] == "main" and calls[0]["rows"] == 6
    assert s["main"]["calls"] + s["sub"]["calls"] == len(calls) and all(c["passes"] >= 1 for c in calls)
    assert sum(c["seconds"] for c in calls) <= result["rollout_seconds"] + 0.01
    assert s["small"]["calls"] == sum(c["rows"] <= rollout_calls.SMALL for c in calls)
    assert calls[0]["reused_tokens"] == 0 and any(c["reused_tokens"] > 0 for c in calls[1:])  # later turns reuse
    assert [p["rows"] for p in result["decode_pass"]] == [1, 3]
    assert out.with_suffix(".md").read_text() == rollout_calls.tables(result)
    with pytest.raises(SystemExit, match="no model at"):
        rollout_calls.main(["--base", str(tmp_path / "nowhere"), "--out", str(out)])


def test_the_step_floor_benchmark_times_each_phase_of_one_step_on_one_thread_and_on_two(tmp_path):
    import json

    import step_floor  # benchmarks/step_floor.py (pytest's pythonpath)

    out = tmp_path / "floor.json"
    step_floor.main(["--base", BASE, "--arms", "today", "shared prefix, lean, skip", "--out", str(out),
                     "questions_per_step=2", "rollouts=3", "max_new_tokens=8"])
    result = json.loads(out.read_text())
    assert list(result["arms"]) == ["today", "shared prefix, lean, skip"]
    for arm in result["arms"].values():
        s, b = arm["seconds"], arm["bounds"]
        assert arm["episodes"] == 6 and all(s[phase]["1"] > 0 and s[phase]["2"] > 0 for phase in step_floor.PHASES)
        assert b["work_core_s"] == pytest.approx(sum(s[phase]["1"] for phase in step_floor.PHASES), abs=1e-3)
        assert b["floor_s"] == pytest.approx(b["work_core_s"] / 2, abs=1e-3)
        assert b["pipeline_s"] == pytest.approx(s["rollouts"]["2"] + max(s["main_update"]["1"], s["sub_update"]["1"]),
                                                abs=1e-3)
        assert b["floor_holds"] == all(s[phase]["1"] <= 2 * s[phase]["2"] for phase in step_floor.PHASES)
        assert all(r["passes"] >= r["calls"] >= 1 for r in arm["rollouts"].values())
        for update in ("main_update", "sub_update"):  # the same batch from the same adapter on each count
            assert arm["sampled_nll"][update]["1"] == pytest.approx(arm["sampled_nll"][update]["2"], rel=1e-4, abs=1e-6)
    assert out.with_suffix(".md").read_text() == step_floor.table(result)
    with pytest.raises(SystemExit, match="no model at"):
        step_floor.main(["--base", str(tmp_path / "nowhere"), "--out", str(out)])


def test_the_step_floor_is_no_bound_where_a_phase_runs_more_than_twice_as_fast_on_two_threads():
    import step_floor  # benchmarks/step_floor.py (pytest's pythonpath)

    def arm(rollouts, main, sub):
        phases = {"episodes": 4, "seconds": {"rollouts": dict(zip("12", rollouts)), "main_update": dict(zip("12", main)),
                                             "sub_update": dict(zip("12", sub))}}
        return {**phases, "bounds": step_floor.bounds(phases)}

    held, broken = arm((8.0, 6.0), (4.0, 3.0), (6.0, 4.0)), arm((8.0, 6.0), (4.0, 1.5), (6.0, 4.0))
    assert held["bounds"]["floor_holds"] and not broken["bounds"]["floor_holds"]
    assert held["bounds"]["floor_s"] == 9.0 and held["bounds"]["pipeline_s"] == 12.0  # (8 + 4 + 6) / 2; 6 + 6
    rows = step_floor.table({"arms": {"first": held, "second": broken}}).splitlines()
    assert rows[2].endswith("| 18 | 2.25 (x0.75) | 3.00 (x1.00) |")
    assert "| no bound (a phase x2.67 on two threads) |" in rows[3]
