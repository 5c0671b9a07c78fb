"""Model paths: a local path is refused at once when missing, a hub name fails fast offline.

``load_policy`` and ``evaluate.make_agent`` tell a local path (``data/nope``, ``./nope``,
``runs/nope`` where ``runs/`` exists) from a hub name (``Qwen/Qwen2.5-0.5B-Instruct``). A missing
local path is never tried on the hub; a hub name is loaded from the local cache first and from
the hub only when it answers, so offline it is one error within seconds.
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from mgrpo_ref import evaluate, policy
from mgrpo_ref.policy import REPO_ROOT, SamplingSettings, is_local_path, load_policy, model_location
from test_cli_inputs import assert_refused, refused_in_process, run_cli

BASE = REPO_ROOT / "data" / "base"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory outside the repository that holds a ``runs/`` folder."""
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_local_paths_and_hub_names_are_told_apart(elsewhere):
    for spec in ("./model", "../model", "/abs/model", "~/model", ".hidden", "runs/no_such_model",
                 "data/no_such_model",  # data/ is in the repository
                 "a/b/c", "has space/x", "a/../b", Path("Qwen/Qwen2.5-0.5B-Instruct")):
        assert is_local_path(spec), spec
    for spec in ("Qwen/Qwen2.5-0.5B-Instruct", "nobody/no-such-model", "gpt2"):
        assert not is_local_path(spec), spec
    (elsewhere / "Qwen").mkdir()  # now Qwen/... can only be a folder here
    assert is_local_path("Qwen/Qwen2.5-0.5B-Instruct")


def test_model_location_finds_the_repository_base_from_anywhere(elsewhere):
    assert Path(model_location("data/base")) == BASE  # as from notebooks/
    assert model_location(str(BASE)) == str(BASE)
    for spec in ("runs/no_such_model", "data/no_such_model", "./nope", "~/no_such_model_here"):
        with pytest.raises(FileNotFoundError, match=f"^no model directory at {spec}$"):
            model_location(spec)
    (elsewhere / "runs" / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="runs/empty is not a model directory"):
        model_location("runs/empty")


def test_a_hub_name_is_checked_against_the_cache_and_the_hub_before_anything_runs(monkeypatch):
    import mgrpo_ref.policy as policy

    monkeypatch.setattr(policy, "_hub_unreachable", lambda timeout=3.0: None)  # a machine online
    assert model_location("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    monkeypatch.setattr(policy, "_hub_unreachable", lambda timeout=3.0: "no network here")
    with pytest.raises(FileNotFoundError, match="neither a local model directory nor in the Hugging Face cache, "
                                                "and the hub cannot be reached \\(no network here\\)"):
        model_location("Qwen/Qwen2.5-0.5B-Instruct")


def test_a_base_is_found_beside_its_adapter(tmp_path):
    (tmp_path / "base").symlink_to(BASE)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert policy._resolve_base("../base", adapter) == str(adapter / "../base")
    with pytest.raises(FileNotFoundError, match="no model directory at ../nope"):
        policy._resolve_base("../nope", adapter)


def test_a_missing_local_model_is_refused_at_once(elsewhere):
    start = time.time()
    for spec in ("runs/no_such_model", "data/no_such_model", Path("no_such_dir")):
        with pytest.raises(FileNotFoundError, match="no model directory at"):
            load_policy(spec, quantization="none")
    assert time.time() - start < 5
    with pytest.raises(ValueError, match="^no model directory at runs/no_such_model$"):
        evaluate.make_agent("runs/no_such_model")
    with pytest.raises(ValueError, match="unknown agent 'wizard'"):
        evaluate.make_agent("wizard")


def test_the_repository_base_loads_from_another_directory(elsewhere):
    agent = load_policy("data/base", quantization="none", sampling=SamplingSettings(temperature=0.0, max_new_tokens=4))
    assert len(agent.act("main", ["<question>What is the capital of Veskaland?</question>\n"])) == 1


@pytest.mark.parametrize("text, why", [
    (json.dumps({"r": 16, "peft_type": "LORA"}), "no base_model_name_or_path"),
    (json.dumps({"base_model_name_or_path": ""}), "no base_model_name_or_path"),
    (json.dumps(["not", "an", "object"]), "no base_model_name_or_path"),
    ("{not json", "not a readable JSON file"),
])
def test_a_bad_adapter_config_is_one_error_naming_the_file(tmp_path, capsys, text, why):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(text)
    with pytest.raises(ValueError, match=why) as err:
        load_policy(adapter, quantization="none")
    assert str(adapter / "adapter_config.json") in str(err.value)
    line = refused_in_process(evaluate.main, ["--single", adapter, "--quantization", "none"], capsys, "evaluate")
    assert str(adapter / "adapter_config.json") in line and why in line


def test_the_evaluate_command_names_a_bad_adapter_config(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16}))
    proc = run_cli("evaluate", "--single", adapter, "--quantization", "none")
    line = assert_refused(proc.returncode, proc.stderr, "evaluate")
    assert f"{adapter / 'adapter_config.json'}: no base_model_name_or_path" in line


def test_the_evaluate_command_refuses_a_missing_local_model_without_the_hub(tmp_path):
    (tmp_path / "runs").mkdir()
    proc = run_cli("evaluate", "--single", "runs/no_such_model", cwd=tmp_path)
    assert assert_refused(proc.returncode, proc.stderr, "evaluate").endswith("error: no model directory at runs/no_such_model")
    assert "huggingface.co" not in proc.stderr


def test_an_unreachable_hub_is_one_error_at_once(monkeypatch):
    """The hub is asked once, with no retries; here it is a closed local port."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.time()
    assert "127.0.0.1:9" in policy._hub_unreachable()
    with pytest.raises(OSError, match="neither a local directory nor in the Hugging Face cache"):
        load_policy("nobody/no-such-model", quantization="none")
    assert time.time() - start < 10
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert policy._hub_unreachable() == "HF_HUB_OFFLINE is set"


def test_the_evaluate_command_fails_fast_on_a_hub_name_it_cannot_get():
    """Here the hub cannot be reached: one line within seconds, not a minute of retries (where it
    can be reached, the hub says the model does not exist, as fast)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    start = time.time()
    proc = run_cli("evaluate", "--single", "nobody-here/no-such-model-7f3a", env=env)
    assert time.time() - start < 30
    line = assert_refused(proc.returncode, proc.stderr, "evaluate")
    assert "cannot load agent 'nobody-here/no-such-model-7f3a'" in line
    assert "Retry" not in proc.stderr


def test_a_cached_hub_model_loads_without_the_hub(tmp_path):
    """A hub name in the local Hugging Face cache is loaded from there, with the hub unreachable."""
    snapshot = tmp_path / "hub" / "models--someone--tiny-base" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        shutil.copy(BASE / name, snapshot / name)
    (tmp_path / "hub" / "models--someone--tiny-base" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-base" / "refs" / "main").write_text("0" * 40)
    env = {**{k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"},
           "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = run_cli("evaluate", "--single", "someone/tiny-base", "--quantization", "none", "--limit", "2",
                   "--out", tmp_path / "report.json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "report.json").read_text())["n"] == 2
    assert "Retry" not in proc.stderr


def test_recorded_paths_are_relative_to_the_project_even_through_a_link(tmp_path, monkeypatch):
    """within_project: a path inside the project is recorded relative to it, also where it runs
    through a link in the project to a folder elsewhere (runs/ kept outside the work tree);
    a path outside it is recorded as given."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "data").mkdir(parents=True)
    (elsewhere / "real-study" / "warm-up").mkdir(parents=True)
    (project / "runs").symlink_to(elsewhere)
    monkeypatch.setattr(policy, "REPO_ROOT", project)
    assert policy.within_project(project / "data") == "data"
    assert policy.within_project(project / "runs" / "real-study" / "warm-up") == "runs/real-study/warm-up"
    assert policy.within_project(elsewhere / "real-study") == str(elsewhere / "real-study")
    monkeypatch.chdir(project)
    assert policy.within_project("runs/real-study/../real-study/warm-up") == "runs/real-study/warm-up"
    # runs/.. is elsewhere's parent, not the project: dropping "runs" by its text would say "data"
    assert policy.within_project("runs/../data") == "runs/../data"
