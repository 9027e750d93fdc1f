"""Every setting and every step is declared once, and each copy made from the declarations stays in step."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from invoke.collection import Collection

from modelarts_images import declared, pipeline
from modelarts_images.config import settings
from modelarts_images.declared import StepName
from modelarts_images.errors import ConfigError, ModelArtsImagesError
from modelarts_images.matrix import cli
from modelarts_images.options import Flags, resolve
from tests.conftest import ROOT
from tests.unit.test_pipeline import entry

INVOKE_YAML = ROOT / "invoke.yaml"
COMMANDS = {**{f"inv {name}": command for name, command in declared.TASKS.items()}, "matrix": declared.MATRIX}


def invoke_tasks() -> Collection:
    import tasks

    return Collection.from_module(tasks)


# --------------------------------------------------------------------------------------------------------------
# settings


def test_the_shipped_invoke_yaml_is_the_declaration_with_its_values() -> None:
    text = INVOKE_YAML.read_text("utf-8")
    values = yaml.safe_load(text)[declared.SECTION]
    assert list(values) == list(declared.BY_KEY), "invoke.yaml's keys, in order, are the declared ones"
    assert text == declared.render_invoke_yaml(values), (
        "invoke.yaml's comments drifted from modelarts_images/declared.py: write "
        "declared.render_invoke_yaml(values) over it")


def test_the_rendered_invoke_yaml_reads_back_as_the_values_it_was_given() -> None:
    values = {"only": "a, b", "jobs": "8", "pip_index": "https://user@mirror.example/simple", "base_prefix": "",
              "extra_tags": ["{tag}-{date}", "{revision}"], "all": True, "mirrors": {"https://a/": "https://b/"},
              "swr_project": "yes", "registry": "null"}  # text YAML would read as something else stays text
    assert yaml.safe_load(declared.render_invoke_yaml(values))[declared.SECTION] == {
        **declared.BUILTIN, **values}


def test_a_key_or_a_name_is_declared_once() -> None:
    names = [setting.name for setting in declared.SETTINGS]
    keys = [setting.key for setting in declared.SETTINGS if setting.key]
    flags = [setting.flag for setting in declared.SETTINGS if setting.flag]
    fills = [setting.fills for setting in declared.SETTINGS if setting.fills]
    for listed in (names, keys, flags, fills):
        assert len(listed) == len(set(listed)), sorted(item for item in listed if listed.count(item) > 1)


def test_the_builtin_values_pass_their_own_checks(tmp_path: Path) -> None:
    checked = settings.resolve(None, root=tmp_path)
    for key, setting in declared.BY_KEY.items():
        if setting.kind is not declared.Kind.IMAGE:
            assert getattr(checked, key) is not None, key


@pytest.mark.parametrize("setting", [s for s in declared.SETTINGS if s.choices], ids=lambda s: s.name)
def test_a_closed_set_refuses_a_stranger_naming_the_set(setting: declared.Setting, tmp_path: Path) -> None:
    wrong = setting.choices[0] + "x"
    with pytest.raises(ConfigError) as caught:
        if setting.key:
            settings.resolve({setting.key: wrong}, root=tmp_path)
        else:
            resolve(None, Flags(**{str(setting.fills): wrong}), root=tmp_path)
    assert ", ".join(setting.choices) in str(caught.value)
    assert f"did you mean '{setting.choices[0]}'?" in str(caught.value)


def test_an_undeclared_key_or_flag_field_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"modelarts.stall_timeout: unknown key"):
        settings.resolve({"stall_timeout": 5}, root=tmp_path)
    with pytest.raises(TypeError, match=r"Flags: stall_timeout: not declared"):
        Flags(stall_timeout="5")
    with pytest.raises(LookupError, match=r"fetch: stall_timeout: not a declared setting with a flag"):
        declared.flags_of(("versions", "stall_timeout"), "fetch")
    with pytest.raises(LookupError, match=r"cache_dir: not a declared setting with a flag"):
        declared.flags_of(("cache_dir",), "matrix")  # declared, but only as a key


def test_flags_are_frozen_values_with_the_declared_defaults() -> None:
    flags = Flags(jobs="2")
    assert flags.jobs == "2" and flags.device == "auto" and flags.only == () and flags.offline is False
    assert flags.replace(offline=True) == Flags(jobs="2", offline=True) != flags
    with pytest.raises(AttributeError):
        flags.jobs = "3"
    with pytest.raises(AttributeError):
        _ = flags.stall_timeout


def test_a_key_without_a_variable_is_a_mapping() -> None:
    """invoke sets no mapping from the environment: the reference names no variable for one."""
    for setting in declared.BY_KEY.values():
        mapping = isinstance(setting.default, dict)
        assert (setting.variable is None) is mapping, setting.name


# --------------------------------------------------------------------------------------------------------------
# the front ends' flags


@pytest.mark.parametrize("name", sorted(declared.TASKS))
def test_a_task_takes_the_flags_declared_for_it_with_their_help(name: str) -> None:
    task = invoke_tasks()[name]
    arguments = task.get_arguments()
    settings_ = declared.flags_of(declared.TASKS[name].flags, name)
    assert [argument.name for argument in arguments] == [str(s.parameter) for s in settings_]
    for argument, setting in zip(arguments, settings_, strict=True):
        assert argument.help == setting.help_in(name)
        assert f"--{argument.names[0]}" == setting.flag
        assert (argument.kind is list) is (setting.takes is declared.Takes.REPEAT)
        assert (argument.kind is bool) is (setting.takes is declared.Takes.SWITCH)
    assert task.__doc__ and task.__doc__.splitlines()[0]  # what `inv --list` shows


def test_the_matrix_takes_the_flags_declared_for_it_with_their_help() -> None:
    options = [action for action in cli.parser()._actions if not isinstance(action, argparse._HelpAction)]
    settings_ = declared.flags_of(declared.MATRIX.flags, "matrix")
    assert [action.option_strings for action in options] == [[setting.flag] for setting in settings_]
    for action, setting in zip(options, settings_, strict=True):
        assert action.help == (argparse.SUPPRESS if setting.hidden else setting.help_in("matrix"))
        assert (action.choices or ()) == (setting.choices or ())


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=str)
def test_each_flag_is_read_by_a_step_its_command_runs(command: str) -> None:
    """A flag that says it is read by steps is offered only by a command that runs one of them (or gives it a
    meaning of its own there, with its own help, as `inv build --dry-run` does)."""
    declared_command = COMMANDS[command]
    if not declared_command.steps:
        return  # `inv plan` runs no step: what it shows comes from the selection alone
    front_end = command.removeprefix("inv ")
    for setting in declared.flags_of(declared_command.flags, front_end):
        if setting.steps and front_end not in setting.help_for:
            assert set(setting.steps) & set(declared_command.steps), (command, setting.name)


def test_each_flags_field_is_read_by_options_resolve(tmp_path: Path) -> None:
    """A declared field that resolve() never reads would be a flag that does nothing: give each one a value that
    changes the resolved options."""
    given: dict[str, Any] = {"versions": "other.yaml", "only": ("a",), "all_images": True, "jobs": "2",
                             "offline": True, "locked": True, "verify_cache": True, "no_closure": True,
                             "refresh": True, "backend": "docker", "no_cache": True, "base_image": "b:1",
                             "base_prefix": "m/", "platform": "linux/arm64", "device": "cpu", "timeout": "9",
                             "size_budget": "1", "verify_reports": "v", "reports_dir": "r", "replace_tags": True,
                             "extra_tags": ("{tag}-x",), "region": "cn-south-1", "project": "p", "dry_run": True,
                             "on": "modelarts", "obs_dir": "obs://b/x/", "flavor": "f", "project_id": "0" * 32,
                             "job_timeout": "5", "detach": True, "job": "job-1", "nodes": "2", "procs_per_node": "2",
                             "launcher": "torchrun", "master_port": "7070", "rendezvous_timeout": "30"}
    assert set(given) == set(declared.FLAG_FIELDS), "a new Flags field needs a value here"
    plain = dataclasses.asdict(resolve(None, root=tmp_path))
    for name, value in given.items():
        changed = dataclasses.asdict(resolve(None, Flags(**{name: value}), root=tmp_path))
        assert changed != plain, f"Flags.{name} changes nothing that resolve() gives"


def test_each_invoke_yaml_key_is_read_by_options_resolve(tmp_path: Path) -> None:
    """A declared key that resolve() never reads would be a setting that does nothing: give each one a value that
    changes the resolved options (the versions.yaml keys an entry leaves out reach it as fallbacks)."""
    given: dict[str, Any] = {"versions": "other.yaml", "only": "a", "all": True, "registry": "r.example.com",
                             "organization": "org", "repository": "repo", "swr_project": "p",
                             "pip_index": "https://pypi.example/simple", "apt_mirror": "http://apt.example",
                             "cache_dir": "elsewhere", "backend": "docker", "jobs": 2, "min_speed": 1,
                             "max_file_size": 1, "mirrors": {"https://a.example/": "https://b.example/"},
                             "reports_dir": "r", "extra_tags": ["{tag}-x"], "base_prefix": "m/",
                             "ci_runners": {"cpu": ["big"]}, "obs_dir": "obs://b/x/", "project_id": "0" * 32,
                             "modelarts_endpoint": "http://127.0.0.1:1", "obs_endpoint": "http://127.0.0.1:2",
                             "iam_endpoint": "http://127.0.0.1:3"}
    assert set(given) == {setting.key for setting in declared.SETTINGS if setting.key}, "a new key needs a value"
    plain = dataclasses.asdict(resolve({}, root=tmp_path))
    for key, value in given.items():
        changed = dataclasses.asdict(resolve({key: value}, root=tmp_path))
        assert changed != plain, f"invoke.yaml's {key} changes nothing that resolve() gives"


# --------------------------------------------------------------------------------------------------------------
# the pipeline


def test_the_pipeline_runs_in_the_recipe_order() -> None:
    order = [step.name for step in pipeline.STEPS]
    assert sorted(order) == sorted(StepName), "every step name has one step"
    chain = [StepName.CHECK_BASES, StepName.FETCH, StepName.BUILD, StepName.VERIFY, StepName.PUSH]
    assert [name for name in order if name in chain] == chain
    assert order[0] is StepName.REGISTRY  # before anything is fetched
    assert order.index(StepName.MANIFEST) > order.index(StepName.VERIFY)
    assert order.index(StepName.TRAINING_JOB) > order.index(StepName.PUSH)
    assert order.index(StepName.PLATFORM) > order.index(StepName.PUSH)  # the platform pulls what was pushed


def test_each_step_needs_what_the_front_end_or_an_earlier_step_gives() -> None:
    fields = {field.name for field in dataclasses.fields(pipeline.Run)}
    given = set(pipeline.GIVEN)
    assert given <= fields
    for step in pipeline.STEPS:
        assert set(step.needs) <= given | {"images"}, step.name
        if step.gives:
            assert step.gives in fields, step.name
            given.add(step.gives)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[StepName]:
    """The steps replaced by bodies that only say they ran."""
    ran: list[StepName] = []

    def body(name: StepName) -> Any:
        def run(_: pipeline.Run) -> tuple[str, ...]:
            ran.append(name)
            return (str(name),)
        return run

    monkeypatch.setattr(pipeline, "STEPS", tuple(dataclasses.replace(step, body=body(step.name))
                                                 for step in pipeline.STEPS))
    return ran


def run_of(tmp_path: Path) -> pipeline.Run:
    return pipeline.Run(options=resolve(None, root=tmp_path), images=())


def test_execute_keeps_the_declared_order_whatever_order_it_is_given(recorded: list[StepName],
                                                                     tmp_path: Path) -> None:
    run: Any = pipeline.execute([StepName.PUSH, StepName.BUILD, StepName.FETCH, StepName.CHECK_BASES],
                                run_of(tmp_path))
    assert recorded == [StepName.CHECK_BASES, StepName.FETCH, StepName.BUILD, StepName.PUSH]
    assert run.built == ("build",) and run.pushed == ("push",) and run.stopped_at is None


def test_a_step_without_what_it_needs_is_refused_before_any_step_runs(recorded: list[StepName],
                                                                      tmp_path: Path) -> None:
    with pytest.raises(LookupError, match=r"step build needs fetched, which no step before it gives"):
        pipeline.execute([StepName.CHECK_BASES, StepName.BUILD], run_of(tmp_path))
    assert recorded == []


def test_a_front_end_ends_a_run_with_stop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The matrix's unchanged cell: its `show` raises Stop at the registry step, and no later step runs."""
    timed: list[StepName] = []

    def stop(step: StepName, item: Any) -> None:
        raise pipeline.Stop

    def no_base_check(*args: Any) -> None:
        raise AssertionError("a step after the Stop ran")

    monkeypatch.setattr(pipeline, "planned_step", lambda image, options: None)  # the lock pins nothing
    monkeypatch.setattr(pipeline, "check_bases_step", no_base_check)
    run = pipeline.Run(options=resolve(None, root=tmp_path), images=(entry(),), show=stop)
    pipeline.execute([StepName.REGISTRY, StepName.CHECK_BASES], run, timed=lambda step, seconds: timed.append(step))
    assert run.stopped_at is StepName.REGISTRY and timed == [StepName.REGISTRY]
    assert run.in_registry == ()  # what the stopped step would have given is not kept


@pytest.mark.parametrize(("step", "code"), [(StepName.CHECK_BASES, 4), (StepName.VERIFY, 5), (StepName.LOGIN, 6)])
def test_no_engine_is_the_error_of_the_step_that_needed_one(step: StepName, code: int, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    run = pipeline.Run(options=resolve(None, Flags(verify_reports=str(tmp_path / "v")), root=tmp_path),
                       images=(entry(),))
    with pytest.raises(ModelArtsImagesError) as caught:
        pipeline.execute([step], run)
    assert caught.value.exit_code == code and "no Docker Engine answers" in str(caught.value)
