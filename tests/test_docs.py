"""The front door and the reference stay true: every command shown in README.md and docs/*.md exists with every option
it shows (checked against the program's own --help), the README's results table is the shipped report's, its
Python example runs as written, its install and test commands are CI's, and the docs site builds with no broken
link (mkdocs build --strict)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from vision_ensemble.hub import SHIPPED_REPORT, fill_results, readme_results_markdown

README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))

# Commands of other tools, shown beside ours: skipped. A program on neither list fails (a misspelt name).
OTHER_TOOLS = {"pip", "pip3", "git", "curl", "bash", "sh", "export", "cd", ".", "source", "echo", "mkdir", "ls", "cat",
               "cp", "mv", "rm", "tar", "unzip", "hf", "huggingface-cli", "mlflow", "tensorboard", "wandb", "torchrun",
               "sbatch", "apt-get", "sudo", "nvidia-smi", "mkdocs", "playwright", "chromium"}
PYTHONS = {"python", "python3"}  # also as a path: .venv/bin/python
OTHER_PYTHON_MODULES = {"venv", "pip"}  # python -m venv, python -m pip: another tool's
PASSES_THROUGH = {"-m vision_ensemble.sweep": "train/finetune.py", "vision-ensemble sweep": "train/finetune.py"}
OPTION = re.compile(r"^--?[A-Za-z][\w-]*$")


def bash_blocks(path: Path) -> list[str]:
    """The fenced ```bash blocks of a Markdown file (indented ones inside list items too)."""
    return [re.sub(r"(?m)^" + indent, "", body)
            for indent, body in re.findall(r"(?ms)^([ \t]*)```bash\n(.*?)^[ \t]*```", path.read_text())]


def commands(block: str) -> list[list[str]]:
    """The commands of a bash block as token lists: `\\`-continued lines joined, comments and `$(...)` dropped, each
    line split at `&&`, `||`, `;` and `|`, leading NAME=value assignments dropped; `srun` and `bash -c '...'` are
    looked through."""
    found = []
    for line in re.sub(r"\\\n", " ", block).splitlines():
        tokens = shlex.split(re.sub(r"\$\([^()]*\)", "", line), comments=True)
        command: list[str] = []
        for token in tokens + [";"]:
            if token in ("&&", "||", ";", "|"):
                while command and re.match(r"^[A-Za-z_]\w*=", command[0]):
                    command.pop(0)
                if command and command[0] == "srun":
                    command.pop(0)
                if command[:2] in (["bash", "-c"], ["sh", "-c"]) and len(command) > 2:
                    found += commands(command[2])
                elif command:
                    found.append(command)
                command = []
            else:
                command.append(token)
    return found


def program_of(command: list[str]) -> tuple[str, list[str], list[str]] | None:
    """(program, its arguments, the launcher's arguments) of a command that runs this project's code, or None for
    another tool's; fails on an unknown program. A program is named as help_texts.py takes it."""
    name = Path(command[0]).name if "/" in command[0] else command[0]
    if name == "vision-ensemble":
        subcommand = [command[1]] if len(command) > 1 and not command[1].startswith("-") else []
        return " ".join([name, *subcommand]), command[1 + len(subcommand):], []
    if name == "accelerate":
        if command[1:2] != ["launch"]:
            return None  # accelerate config, env, ...: accelerate's own commands
        rest = command[2:]
        start = next((i for i, t in enumerate(rest) if t.endswith(".py") or t == "-m"), None)
        assert start is not None, f"accelerate launch of no script or module: {shlex.join(command)}"
        launched = program_of(["python", *rest[start:]])
        assert launched is not None, f"accelerate launch of another tool: {shlex.join(command)}"
        return launched[0], launched[1], rest[:start]
    if name in PYTHONS:
        args = command[1:]
        if args[:1] == ["-m"]:
            module = args[1]
            if module.split(".")[0] in OTHER_PYTHON_MODULES:
                return None
            if module == "vision_ensemble.cli":
                return program_of(["vision-ensemble", *args[2:]])
            assert module == "pytest" or module.split(".")[0] == "vision_ensemble", \
                f"unknown module: {shlex.join(command)}"
            return f"-m {module}", args[2:], []
        assert args and args[0].endswith(".py"), f"python without a script: {shlex.join(command)}"
        assert (REPO / args[0]).is_file(), f"{args[0]} is not a script of this repository: {shlex.join(command)}"
        return args[0], args[1:], []
    assert name in OTHER_TOOLS, (f"unknown program {name!r} (add it to OTHER_TOOLS if it is another tool's): "
                                 f"{shlex.join(command)}")
    return None


def shown_commands() -> list[tuple[str, list[str]]]:
    """(file, command) of every command of the README and docs/ that runs this project's code."""
    return [(path.name, command) for path in [README, *PAGES] for block in bash_blocks(path)
            for command in commands(block) if program_of(command) is not None]


def options_in(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    """Each shown program's --help, run once (tests/help_texts.py: one interpreter for all of them)."""
    programs = {program_of(c)[0] for _, c in shown_commands()}
    programs |= {"vision-ensemble"} | {"accelerate launch"} | set(PASSES_THROUGH.values())
    result = subprocess.run([sys.executable, str(REPO / "tests" / "help_texts.py"), *sorted(programs)], cwd=REPO,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "COLUMNS": "10000", "HF_HUB_OFFLINE": "1",
                                 "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_the_readme_and_the_docs_show_commands_of_every_kind():
    programs = {program_of(c)[0] for _, c in shown_commands()}
    assert {"app.py", "vision-ensemble predict", "vision-ensemble train", "vision-ensemble evaluate",
            "vision-ensemble push", "train/finetune.py", "evaluation/evaluate.py", "-m pytest"} <= programs


def test_every_shown_command_exists_with_every_option_it_shows(helps):
    subcommands = set(re.findall(r"(?m)^  (\w+)  ", helps["vision-ensemble"]))
    wrong = []
    for page, command in shown_commands():
        program, args, launcher = program_of(command)
        if program.startswith("vision-ensemble ") and program.split()[1] not in subcommands:
            wrong.append(f"{page}: no such command {program!r}: {shlex.join(command)}")
            continue
        text = helps[program]
        if text.startswith("error:") or not text.strip():
            wrong.append(f"{page}: {program} --help failed ({text[:200]}): {shlex.join(command)}")
            continue
        own, passed = (args[: args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
        checked = [(o, program) for o in own] + [(o, "accelerate launch") for o in launcher]
        if program in PASSES_THROUGH:  # a sweep's options after `--` go to every trial's training
            checked += [(o, PASSES_THROUGH[program]) for o in passed]
        for token, owner in checked:
            option = token.split("=")[0]
            if OPTION.match(option) and option not in options_in(helps[owner]):
                wrong.append(f"{page}: {owner} has no option {option}: {shlex.join(command)}")
    assert not wrong, "\n".join(wrong)


def test_the_command_check_catches_a_renamed_option_and_an_unknown_program(helps):
    command = commands("vision-ensemble predict photos/ --output-file predictions.csv  # renamed\n")[0]
    program, args, _ = program_of(command)
    assert "--output-file" not in options_in(helps[program]) and "--output" in options_in(helps[program])
    with pytest.raises(AssertionError, match="unknown program"):
        program_of(commands("pyhton app.py\n")[0])
    slurm = commands("srun bash -c 'accelerate launch --multi_gpu \\\n  train/finetune.py --model m $RESUME'\n")
    assert program_of(slurm[0]) == ("train/finetune.py", ["--model", "m", "$RESUME"], ["--multi_gpu"])
    assert commands("export RESUME=$([ -d x ] && echo \"--resume latest\")  # comment\nA=1 python app.py | cat\n") == \
        [["export", "RESUME="], ["python", "app.py"], ["cat"]]


def test_the_readme_results_table_is_the_shipped_report():
    readme = README.read_text()
    table = readme_results_markdown(json.loads(SHIPPED_REPORT.read_text()))
    assert fill_results(readme, table) == readme, "the README's results table differs from " \
        "results/cifar10/report.json: run `python docs/readme_results.py`"


def test_the_readme_is_short_and_keeps_the_spaces_front_matter_and_cis_commands():
    readme = README.read_text()
    assert len(readme.splitlines()) <= 150
    assert readme.startswith("---\ntitle: Vision Ensemble\n") and "\napp_file: app.py\n" in readme.split("\n---\n")[0]
    ci = (REPO / ".ci" / "run").read_text()
    for section in ("install", "test"):
        command = ci.split(f"# --- README: {section} ---\n")[1].splitlines()[0]
        assert any(command in block.splitlines() for block in bash_blocks(README)), command


def test_the_readmes_links_and_images_exist():
    missing = [target for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
               if "://" not in target and not (REPO / target).exists()]
    assert not missing, missing


@pytest.mark.slow
def test_the_readmes_python_example_runs_on_the_shipped_ensemble(monkeypatch):
    example = next(block for block in re.findall(r"(?ms)^```python\n(.*?)^```", README.read_text())
                   if "from vision_ensemble import load" in block)
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    classes = json.loads((REPO / "models" / "cifar10" / "ensemble.json").read_text())["class_names"]
    assert len(lines) == 2 and all(line.split()[1] in classes for line in lines), lines


@pytest.mark.slow
def test_the_docs_site_builds_with_no_broken_link(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    reference = (tmp_path / "predict" / "index.html").read_text()
    assert "predict_inputs" in reference and "Records (dicts, in order)" in reference  # from the docstrings
