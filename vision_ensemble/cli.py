"""`vision-ensemble COMMAND ...`: one command for every step of the data flow.  Each subcommand is an existing entry
point's own parser and `main(argv)`, loaded only when it runs: `vision-ensemble train --help` is
train/finetune.py's help, and `vision-ensemble --help` starts without torch."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import shlex
import sys
from pathlib import Path
from typing import Callable, NamedTuple

PROG = "vision-ensemble"
ROOT = Path(__file__).resolve().parents[1]  # the checkout holding the package, train/, evaluation/ and app.py


class CommandError(Exception):
    """A mistake in the command line, said in one line before any entry point loads."""


class Command(NamedTuple):
    target: str  # a module of the package, or a script path relative to ROOT (ends in .py)
    summary: str = ""  # the help line where the target's docstring does not open with one
    before: Callable[[list[str]], None] | None = None  # runs with the arguments before the target loads


def single_process(args: list[str]) -> None:
    """`train` is one process: options of `accelerate launch` given here were meant for the launcher, so the error
    is the command that launches several (theirs before the module, the rest after it)."""
    from accelerate.commands.launch import launch_command_parser

    from .config import build_parser

    own = {s for action in build_parser("")._actions for s in action.option_strings}
    launcher = {s: action for action in launch_command_parser()._actions for s in action.option_strings if s not in own}
    launch, rest, args = [], [], list(args)
    while args:
        arg = args.pop(0)
        action = launcher.get(arg.split("=")[0])
        if action is None:
            rest.append(arg)
        else:
            launch += [arg, args.pop(0)] if action.nargs != 0 and "=" not in arg and args else [arg]
    if launch:
        raise CommandError(f"{' '.join(launch)}: options of accelerate launch, and `{PROG} train` trains in this one "
                           f"process; for several, run: accelerate launch {shlex.join(launch)} -m vision_ensemble.cli "
                           f"train {shlex.join(rest)}")


def objects_in_malloc(args: list[str]) -> None:
    """As `python app.py` starts: this process again with Python's objects in malloc (serving/allocator.py)."""
    from .serving.allocator import restart_with_objects_in_malloc

    restart_with_objects_in_malloc()


# In data-flow order; a new subcommand is one line here.
COMMANDS = {
    "label": Command("vision_ensemble.labeling.app"),
    "check": Command("vision_ensemble.data.check", "Check a dataset before training: class counts, duplicates, sizes."),
    "train": Command("train/finetune.py", before=single_process),
    "sweep": Command("vision_ensemble.training.sweep", "Hyperparameter sweeps with Optuna over train/finetune.py."),
    "evaluate": Command("evaluation/evaluate.py"),
    "predict": Command("vision_ensemble.serving.batch"),
    "thresholds": Command("evaluation/thresholds.py"),
    "export": Command("vision_ensemble.serving.onnx_export"),
    "push": Command("vision_ensemble.hub", "Push a model folder (a run's best/) to the Hugging Face Hub."),
    "serve": Command("app.py", "The Space and its JSON API: the ensemble's predictions and the threshold optimizer.",
                     before=objects_in_malloc),
}


def source_of(target: str) -> Path:
    return ROOT / (target if target.endswith(".py") else target.replace(".", "/") + ".py")


def summary_of(command: Command) -> str:
    """The help line: the command's own, or the first line of its target's docstring (read, not imported)."""
    if command.summary:
        return command.summary
    path = source_of(command.target)
    if not path.exists():
        return f"(needs a checkout of the repository: {command.target})"
    return (ast.get_docstring(ast.parse(path.read_text())) or "").splitlines()[0]


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [ARGS ...]    ({PROG} COMMAND --help: that command's options)", "",
             "Fine-tune timm backbones, ensemble them, publish them to the Hugging Face Hub and serve them; the",
             "commands in data-flow order:", ""]
    lines += [f"  {name:<{width}}  {summary_of(command)}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def load_main(target: str) -> Callable:
    """The target's `main`: a package module imported, a script beside the package loaded from its file."""
    if not target.endswith(".py"):
        return importlib.import_module(target).main
    path = source_of(target)
    if not path.exists():
        raise CommandError(f"{target} not found in {ROOT}: this command runs from a checkout of the repository")
    name = f"script_{path.stem}"  # not __main__: the script's own `if __name__ == "__main__"` stays off
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    try:
        if name not in COMMANDS:
            raise CommandError(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
        command = COMMANDS[name]
        if command.before:
            command.before(args)
        entry = load_main(command.target)
    except CommandError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    sys.argv = [f"{PROG} {name}", *args]  # the command line as the entry point's own; its usage line names it so
    return entry(args) or 0


if __name__ == "__main__":
    sys.exit(main())
