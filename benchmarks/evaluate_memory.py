"""Peak anonymous memory (RssAnon) of `evaluation/evaluate.py` on a generated photo dataset of any size.

    python benchmarks/evaluate_memory.py --photos 20000 --root /tmp/evaluate-memory
    python benchmarks/evaluate_memory.py --photos 20000 --root /tmp/evaluate-memory --repo /work/main   # another checkout

Generates `--photos` JPEG photos (`--size`, above the 224 px input; noise under coloured shapes, 10 classes) as an
image folder, `--test-share` of them in test/, the rest in train/ (val is 10% of train, as training splits it),
and one tiny member (test_resnet, 224 px input, made as tests/conftest.py `make_member` does).  The decoded cache
(256 px, what evaluate.py picks for a 224 px member) is built first in its own process, so the measurement is
the evaluation itself: evaluate.py's RssAnon is sampled every 0.1 s from /proc (pages of the memory-mapped cache
are file-backed and not counted: the kernel can drop them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from conftest import make_member  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]


def generate(root: Path, photos: int, size: tuple[int, int], test_share: float) -> None:
    """`photos` JPEGs under root/{train,test}/classK/; photos already there are kept (an interrupted run resumes)."""
    rng = np.random.default_rng(0)
    w, h = size
    n_test = int(photos * test_share)
    for i in tqdm(range(photos), desc="generating photos", unit="photo"):
        split, label = ("test" if i < n_test else "train"), i % len(CLASSES)
        folder, name = root / split / CLASSES[label], f"{i:06d}.jpg"
        if (folder / name).exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        pixels[y:y + h // 3 + label * 4, x:x + w // 3] = (25 * label, 255 - 20 * label, 120)
        Image.fromarray(pixels).save(folder / name, quality=85)


def rss_anon_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=20000)
    p.add_argument("--size", default="320x256", help="photo width x height (above the 224 px input)")
    p.add_argument("--test-share", type=float, default=0.8, help="share of the photos in test/")
    p.add_argument("--root", type=Path, default=Path("/tmp/evaluate-memory"))
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout whose evaluate.py is measured")
    p.add_argument("--batch-size", type=int, help="evaluate.py's --batch-size (default: its own)")
    args = p.parse_args()
    data, cache = args.root / "photos", args.root / "cache"
    generate(data, args.photos, tuple(int(v) for v in args.size.split("x")), args.test_share)
    member = args.root / "member"
    if not (member / "config.json").exists():
        make_member(member, 0, 224, classes=CLASSES)
    env = {**os.environ, "PYTHONPATH": str(args.repo), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", "import sys; from vision_ensemble.data import load_dataset; "
                    f"load_dataset({str(data)!r}, {str(cache)!r}, cache_size=256)"], env=env, check=True)
    command = [sys.executable, str(args.repo / "evaluation" / "evaluate.py"), "--models", str(member), "--data-dir",
               str(data), "--cache-dir", str(cache), "--output-dir", str(args.root / "out"),
               *(["--batch-size", str(args.batch_size)] if args.batch_size else [])]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, rss_anon_kb(process.pid))
        time.sleep(0.1)
    output = process.stdout.read()
    if process.returncode != 0:
        raise SystemExit(f"evaluate.py failed:\n{output[-3000:]}")
    n_test, n_train = (sum(1 for _ in (data / split).rglob("*.jpg")) for split in ("test", "train"))
    print(output.strip().splitlines()[-1])
    print(f"evaluate.py ({args.repo}): {n_test:,} test + {round(n_train * 0.1):,} val images at 256 px "
          f"cache: peak RssAnon {peak / 1024:.0f} MiB, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
