"""Print the `--help` text of each program named on the command line, as one JSON object {program: text}: what
tests/test_docs.py checks the commands of README.md and docs/ against.

    python tests/help_texts.py "vision-ensemble" "vision-ensemble train" "app.py" "-m vision_ensemble.labeler" \
        "-m pytest" "accelerate launch"

One interpreter for all of them, so torch is imported once. Each program's own `main(["--help"])` runs as its
command line would run it: `vision-ensemble SUB` loads its entry point as vision_ensemble/cli.py does (without the
step before it: `serve` would start this process again with PYTHONMALLOC set), a script of the repository is
loaded from its file, `-m MODULE` is imported. A program that cannot be loaded gets "error: ..." as its text.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import sys
import warnings
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["COLUMNS"] = "10000"  # argparse wraps at the terminal's width: one line per option


def entry_point(program: str):
    """The `main` of `program`: 'vision-ensemble[ SUB]', 'path/to/script.py' or '-m module'."""
    from vision_ensemble import cli

    if program == "vision-ensemble":
        return cli.main
    if program.startswith("vision-ensemble "):
        return cli.load_main(cli.COMMANDS[program.split()[1]].target)
    if program.startswith("-m "):
        return importlib.import_module(program[3:]).main
    path = REPO / program
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def help_text(program: str) -> str:
    out = io.StringIO()
    try:
        if program == "accelerate launch":
            from accelerate.commands.launch import launch_command_parser

            # Its help shows only the options of the platform named in sys.argv: this is `accelerate launch --help`.
            with mock.patch.object(sys, "argv", ["accelerate", "launch", "--help"]):
                return launch_command_parser().format_help()
        if program == "-m pytest":
            import pytest

            with contextlib.redirect_stdout(out):
                pytest.main(["--help", "-p", "no:cacheprovider", str(REPO / "tests")])
            return out.getvalue()
        main = entry_point(program)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                mock.patch.object(sys, "argv", [program, "--help"]):  # argparse's usage line names the program
            try:
                main(["--help"])
            except SystemExit:  # argparse's --help
                pass
        return out.getvalue()
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    print(json.dumps({program: help_text(program) for program in sys.argv[1:]}))
