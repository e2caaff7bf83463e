"""Write the README's results table from the shipped ensemble's evaluation, results/cifar10/report.json, between the
README's `<!-- results:start -->` and `<!-- results:end -->` markers (the rest of the README is left as it is).

    python docs/readme_results.py             # after the shipped ensemble is evaluated again

tests/test_docs.py fails while the README's table and the report differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vision_ensemble.hub import SHIPPED_REPORT, SPACE_README, fill_results, readme_results_markdown  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, default=SHIPPED_REPORT, help="the evaluation report (default: "
                        "results/cifar10/report.json)")
    parser.add_argument("--readme", type=Path, default=SPACE_README, help="the README to update (default: README.md)")
    args = parser.parse_args(argv)
    readme = args.readme.read_text()
    updated = fill_results(readme, readme_results_markdown(json.loads(args.report.read_text())))
    args.readme.write_text(updated)
    print(f"{args.readme}: results table {'updated' if updated != readme else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
