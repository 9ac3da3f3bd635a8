"""dvc.yaml says what each stage reads and writes; this checks that it tells the truth.

DVC reruns a stage only when a listed dep or param changes, so a module the stage imports but
does not list would let stale outputs survive a code change. Each stage's script is checked
against its dvc.yaml entry: the package modules it imports (transitively), the paths on its
command line, and the `Reads:` / `Writes:` / `Params:` lines of its docstring. In a docstring,
`<name>` stands for the value of `--name` on the stage's command line: the entry of a foreach
stage, or the stage a script shared by several stages runs.
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest
import yaml

from bertpipe import config

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def resolve(text: str) -> str:
    """dvc.yaml with DVC's `${...}` filled in: params by their values in params.yaml, and a
    foreach stage's `${key}` by a name (its stages look the same for every entry)."""

    def value(match: re.Match) -> str:
        if match[1] == "key":
            return "some_entry"
        found = PARAMS
        for part in match[1].split("."):
            found = found[part]
        return str(found)

    return re.sub(r"\$\{([\w.]+)\}", value, text)


PIPELINE = yaml.safe_load(resolve((REPO / "dvc.yaml").read_text(encoding="utf-8")))
STAGES = {name: stage.get("do", stage) for name, stage in PIPELINE["stages"].items()}
RAW_STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def split_cmd(cmd: str) -> tuple[list[str], str, list[str]]:
    """(launcher, script, arguments) of a stage's command: `python stages/<script>.py ...`, or
    the same script under `torchrun [its options]`, as the README's "Scaling out" advises."""
    words = cmd.split()
    at = next(i for i, word in enumerate(words) if re.fullmatch(r"stages/\w+\.py", word))
    return words[:at], words[at], words[at + 1 :]


def script(name: str) -> Path:
    """The stage script that stage `name` runs."""
    return REPO / split_cmd(STAGES[name]["cmd"])[1]


def name_arg(name: str) -> str | None:
    """The value of `--name` on stage `name`'s command line, if it has one."""
    cmd = STAGES[name]["cmd"].split()
    return cmd[cmd.index("--name") + 1] if "--name" in cmd else None


def names(entries: list) -> list[str]:
    """dvc.yaml list entries are either 'path' or {'path': {options}}."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def outputs(stage: dict) -> list[str]:
    """Everything a stage writes: its outs, metrics and plots."""
    return [p for kind in ("outs", "metrics", "plots") for p in names(stage.get(kind, []))]


def package_imports(path: Path, seen: set[str] | None = None) -> set[str]:
    """`src/bertpipe/<m>.py` for every bertpipe module `path` imports, directly or not."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module == "bertpipe":
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bertpipe."):
            modules = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            modules = [a.name.split(".")[1] for a in node.names if a.name.startswith("bertpipe.")]
        for module in modules:
            file = f"src/bertpipe/{module}.py"
            if file not in seen and (REPO / file).exists():
                seen.add(file)
                package_imports(REPO / file, seen)
    return seen


def docstring_words(name: str, label: str) -> list[str]:
    """The words of the `<label>:` line (and its indented continuation) of the docstring of
    stage `name`'s script, `<name>` replaced by the stage's --name."""
    doc = ast.get_docstring(ast.parse(script(name).read_text(encoding="utf-8"))) or ""
    match = re.search(rf"^{label}:(.*(?:\n[ \t]+\S.*)*)", doc, re.MULTILINE)
    assert match, f"{script(name).name}: docstring has no '{label}:' line"
    words = [w.strip("()`,:;") for w in match.group(1).split()]
    entry = name_arg(name)
    return [w.replace("<name>", entry) if entry else w for w in words]


def docstring_paths(name: str, label: str) -> set[str]:
    words = docstring_words(name, label)
    return {w.rstrip("/") for w in words if w.startswith(("data/", "metrics/"))}


def covers(general: str, specific: str) -> bool:
    """`specific` is `general` or a path inside it."""
    return specific == general or specific.startswith(general + "/")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_runs_its_own_script_or_a_shared_one_by_name(name):
    """`python stages/<name>.py`, or a script that no stage is named after, shared by stages
    that differ only in params, told by `--name <name>` which one it runs."""
    assert_launches_its_script(name, STAGES[name]["cmd"])


def assert_launches_its_script(name: str, cmd: str) -> None:
    launcher, path, _ = split_cmd(cmd)
    assert launcher == ["python"] or launcher[:1] == ["torchrun"]
    shared = script(name).stem not in STAGES and name_arg(name) == name
    assert path == f"stages/{name}.py" or shared
    assert path in names(STAGES[name]["deps"])


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_the_readmes_torchrun_advice_keeps_a_stage_wired(name):
    """The README tells multi-GPU users to edit a training stage's `cmd`: the edited stage
    must still pass every rule here that reads the command."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    advice = r"change the stage's `cmd` in `dvc.yaml` from\s+`([^`]+)` to\s+`([^`]+)`"
    old, new = re.search(advice, readme).groups()
    cmd = STAGES[name]["cmd"]
    edited = cmd.replace(old.replace("pretrain", name), new.replace("pretrain", name))
    assert edited != cmd and split_cmd(edited)[0][0] == "torchrun"
    assert split_cmd(edited)[1:] == split_cmd(cmd)[1:]  # the same script and arguments
    assert_launches_its_script(name, edited)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_list_exactly_the_package_modules_the_script_imports(name):
    listed = {d for d in names(STAGES[name]["deps"]) if d.startswith("src/")}
    assert listed == package_imports(script(name))


def section(param: str) -> str:
    """The params section a dvc.yaml param is or is in: `hf_bert` of `hf_bert.<entry>`."""
    return param.split(".")[0]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_params_are_whole_known_sections_or_the_own_entry_and_match_the_docstring(name):
    """A foreach stage over a section of named entries (d2l_bert, hf_bert) tracks its own entry
    only, `<section>.${key}`: adding or editing another entry must not rerun it (for hf_bert@, a
    fetch from the Hub, maybe of a new commit, and everything downstream). Every other stage
    tracks whole sections."""
    params = STAGES[name].get("params", [])
    foreach = RAW_STAGES[name].get("foreach")
    if foreach:
        assert params == [f"{foreach.removeprefix('${').removesuffix('}')}.some_entry"]
    else:
        assert all(isinstance(p, str) and p in config.SECTIONS for p in params)
    words = docstring_words(name, "Params")
    assert [w for w in words if section(w) in config.SECTIONS] == params


@pytest.mark.parametrize("name", sorted(STAGES))
def test_command_line_paths_are_deps_or_outs(name):
    stage = STAGES[name]
    declared = set(names(stage["deps"])) | set(outputs(stage))
    pairs = itertools.pairwise(split_cmd(stage["cmd"])[2])
    paths = [value for flag, value in pairs if flag.startswith("--") and "/" in value]
    assert paths and set(paths) <= declared
    for label, declared in (("Reads", names(stage["deps"])), ("Writes", outputs(stage))):
        mentioned = docstring_paths(name, label)
        for path in (p for p in paths if p in declared):
            assert any(covers(path, m) for m in mentioned), f"{label}: does not name {path}"
        for m in mentioned:
            other_route = label == "Reads" and m.startswith(("data/d2l_bert/", "data/hf_bert/"))
            assert other_route or any(covers(d, m) for d in declared), f"{label}: {m} not wired"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_outputs_follow_the_naming_rule_and_keep_the_run_cache_working(name):
    """Cached data under data/<stage>; metrics/<stage>.json (and curves) as the stage's own
    metrics and plots, uncached. DVC skips its run cache for a stage with any other uncached
    output, and then cannot restore a configuration that was run before."""
    stage = STAGES[name]
    outs = stage.get("outs", [])  # the baseline stage writes metrics only
    assert all(isinstance(o, str) and o.startswith(f"data/{name}") for o in outs)
    each = "/some_entry" if "foreach" in PIPELINE["stages"][name] else ""  # one file per entry
    assert stage["metrics"] == [{f"metrics/{name}{each}.json": {"cache": False}}]
    for plot in stage.get("plots", []):
        assert plot == {f"metrics/{name}_live": {"cache": False}}


def test_every_params_section_is_used_by_a_stage():
    used = {section(p) for stage in STAGES.values() for p in stage.get("params", [])}
    assert used == set(config.SECTIONS)
