"""The data check (`python -m vision_ensemble.datacheck DATA`): class counts per split and their imbalance, the
files left out and why, exact duplicates (content hash) and near-duplicates (`imagehash`'s perceptual hash)
within and across splits, image sizes and modes; each file is read once by the cache's worker processes.
`check_data` returns the report as a dict; `write_report` adds the JSON, HTML and PNG files, `summary_lines`
the terminal text."""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import sys
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image
from tqdm.auto import tqdm

from ..config import (CIFAR10_NAME, DATACHECK_PAIRS_KEPT, IMBALANCE_WARNING_RATIO, MAX_IMAGE_PIXELS,
                      NEAR_DUPLICATE_DISTANCE, default_cache_size)
from ..images import ImageError, load_rgb, oriented_size
from . import cache, sources
from .sources import DataError, extract, find_tree_root, is_archive, walk_split

SPLIT_NAMES = ("train", "val", "test")
HASH_DECODE_SIZE = 64  # JPEGs are decoded at 1/2-1/8 scale down to this (draft mode): phash looks at 32x32 anyway
CHECK_FILE = "datacheck.json"  # the report kept beside a cache, so training checks its data once


# --- reading: every image once, in the cache's worker processes ------------------------------------------

def _inspect(item) -> dict:
    """Content hash, perceptual hash, size, mode and format of one image, or why it cannot be used."""
    if isinstance(item, np.ndarray):  # torchvision's CIFAR-10 arrives decoded
        data, image = item.tobytes(), Image.fromarray(item)
    else:
        with open(item, "rb") if isinstance(item, str) else io.BytesIO(item) as f:
            data = f.read()
        if not data:
            return {"error": "zero-byte file", "bytes": 0}
        image = None
    try:
        image = image or Image.open(io.BytesIO(data))
        height, width = oriented_size(image)  # reads the EXIF block too
    except Image.UnidentifiedImageError:
        return {"error": "not an image", "detail": "the format is not recognised", "bytes": len(data)}
    except (OSError, SyntaxError, ValueError) as exc:
        return {"error": "unreadable", "detail": str(exc), "bytes": len(data)}
    record = {"sha": hashlib.blake2b(data, digest_size=16).hexdigest(), "bytes": len(data), "mode": image.mode,
              "format": image.format or "array", "height": height, "width": width}
    if width * height > MAX_IMAGE_PIXELS:
        return {**record, "error": "too many pixels", "detail": f"{width}x{height} is over {MAX_IMAGE_PIXELS:,}"}
    if image.format == "JPEG":
        image.draft("RGB", (HASH_DECODE_SIZE, HASH_DECODE_SIZE))
    try:  # decoded as the cache decodes, so what fails here fails there
        pixels = load_rgb(image, max_pixels=MAX_IMAGE_PIXELS)
    except ImageError as exc:
        return {**record, "error": "unreadable", "detail": str(exc)}
    import imagehash  # here: `finetune.py --no-data-check` trains where it is not installed (the GPU box)

    bits = imagehash.phash(Image.fromarray(pixels)).hash  # 8x8 booleans
    return {**record, "phash": int.from_bytes(np.packbits(bits).tobytes(), "big")}


def _inspect_chunk(split: str, indices: np.ndarray) -> list[tuple[int, dict]]:
    return [(int(i), _inspect(cache._ITEMS[split][i])) for i in indices]


def _read_all(items: dict[str, object]) -> dict[str, list[dict]]:
    records = {name: [None] * len(split) for name, split in items.items()}
    with cache._pool(items) as pool:
        futures = {pool.submit(_inspect_chunk, name, chunk): name for name, split in items.items()
                   for chunk in cache._chunks(np.arange(len(split)))}
        with tqdm(total=sum(map(len, records.values())), desc=f"checking ({cache._worker_count()} processes)",
                  unit="img", mininterval=1.0, smoothing=0.05) as bar:
            for future in as_completed(futures):
                results = future.result()
                for i, record in results:
                    records[futures[future]][i] = record
                bar.update(len(results))
    return records


# --- duplicates ------------------------------------------------------------------------------------------

def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of 64-bit hashes within `max_distance` bits, and their distances, without comparing all
    pairs: split into `max_distance + 1` blocks of bits, two hashes that close agree on at least one whole block
    (pigeonhole), so only hashes sharing a block are compared (multi-index hashing, Norouzi et al. 2012)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    bounds = np.linspace(0, 64, max_distance + 2).astype(int)
    candidates = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        key = (hashes >> np.uint64(lo)) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        key = key[order]
        for offset in range(1, len(key)):  # equal keys are adjacent: pair each with the next `offset` ones
            same = np.flatnonzero(key[offset:] == key[:-offset])
            if not len(same):
                break
            candidates.append(np.stack([order[same], order[same + offset]], axis=1))
    if not candidates:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    pairs = np.concatenate(candidates)
    pairs = pairs[np.bitwise_count(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]]) <= max_distance]  # most are far
    first, second = pairs.min(axis=1), pairs.max(axis=1)
    code = np.unique(first * len(hashes) + second)  # a pair shares several blocks: count it once
    first, second = code // len(hashes), code % len(hashes)
    return first, second, np.bitwise_count(hashes[first] ^ hashes[second]).astype(np.int64)


def _pair_kind(a: dict, b: dict) -> str:
    return a["split"] if a["split"] == b["split"] else "-".join(sorted((a["split"], b["split"]), key=SPLIT_NAMES.index))


def find_duplicates(images: list[dict], max_distance: int) -> dict:
    """Exact duplicates (equal content hashes) as groups, near-duplicates as pairs, both counted per split and
    across splits (`train-test`: leakage), worst first: across splits, then with different labels, then closest."""
    # A group of equal images is linked as a star (each image to the group's first), so that a thousand blank
    # images make a thousand pairs, not half a million: first equal content, then equal perceptual hashes among
    # the distinct contents, then hashes a few bits apart among the distinct hashes.
    by_sha = defaultdict(list)
    for i, image in enumerate(images):
        by_sha[image["sha"]].append(i)
    pairs = [(group[0], j, 0) for group in by_sha.values() for j in group[1:]]
    contents = np.array([group[0] for group in by_sha.values()], dtype=np.int64)
    hashes = np.array([images[i]["phash"] for i in contents], dtype=np.uint64)
    distinct, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    pairs += [(int(contents[first[h]]), int(i), 0) for i, h in zip(contents, inverse) if contents[first[h]] != i]
    a, b, distance = near_pairs(distinct, max_distance)
    pairs += [(int(contents[first[i]]), int(contents[first[j]]), int(d)) for i, j, d in zip(a, b, distance)]
    rows = [{"kind": _pair_kind(images[i], images[j]), "distance": d, "exact": images[i]["sha"] == images[j]["sha"],
             "labels_differ": images[i]["class"] != images[j]["class"], "a": images[i]["name"], "b": images[j]["name"],
             "a_class": images[i]["class"], "b_class": images[j]["class"]} for i, j, d in pairs]
    rows.sort(key=lambda r: ("-" not in r["kind"], not r["labels_differ"], r["distance"], not r["exact"], r["a"]))
    counts = defaultdict(lambda: {"exact": 0, "near": 0})
    for row in rows:
        counts[row["kind"]]["exact" if row["exact"] else "near"] += 1
    return {"max_distance": max_distance, "counts": dict(counts), "pairs": rows}


# --- sources ---------------------------------------------------------------------------------------------

def _tree_items(root: Path, display) -> tuple[dict, dict, dict, list[dict], list[str]]:
    """Items, names, labels and skipped files of an image-folder tree, as the cache reads it."""
    items, names, labels, skipped, classes = {}, {}, {}, [], set()
    for split in SPLIT_NAMES:
        if not (root / split).is_dir():
            continue
        by_class, left_out = walk_split(root / split)
        skipped += [{"split": split, "file": display(path), "reason": reason} for path, reason in left_out]
        classes |= set(by_class)
        items[split] = [str(p) for paths in by_class.values() for p in paths]
        names[split] = [display(p) for paths in by_class.values() for p in paths]
        labels[split] = [name for name, paths in by_class.items() for _ in paths]
    return items, names, labels, skipped, sorted(classes)


def _rows(items: dict) -> dict:
    return {split: [f"{split} row {i}" for i in range(len(split_items))] for split, split_items in items.items()}


def _source_items(data_dir: str, workdir: Path, cache_dir: Path | None) -> tuple[dict, dict, dict, list, list[str]]:
    """(items, display names and class names per split, files skipped before reading, class names) of any
    `--data-dir`; an archive is read from `cache_dir`'s extracted copy when there is one, else extracted in
    `workdir`, and its files are named `archive:path inside it`."""
    path = Path(data_dir).expanduser()
    if data_dir == CIFAR10_NAME:
        cache_dir = cache_dir or cache.prepare_cache(CIFAR10_NAME)
        names = json.loads((cache_dir / "meta.json").read_text())["class_names"]
        items = {s: np.load(cache_dir / f"{s}_images.npy", mmap_mode="r") for s in ("train", "test")}
        labels = {s: [names[i] for i in np.load(cache_dir / f"{s}_labels.npy")] for s in items}
        return items, _rows(items), labels, [], names
    if sources.looks_like_hub_id(data_dir) or sources.parquet_files(data_dir) or sources.is_saved_hf_dataset(path):
        hf = sources.open_hf_dataset(data_dir)
        image, label = sources.hf_columns(hf["train"], data_dir)
        names = sources.hf_class_names(hf, label)
        items = {s: sources.HFImages(split, image) for s, split in hf.items()}
        labels = {s: [names[i] for i in sources.hf_labels(split, label, names)] for s, split in hf.items()}
        return items, _rows(items), labels, [], names
    if not path.exists():
        raise DataError(f"data source not found: {data_dir}")
    if is_archive(path):
        cached = cache_dir / "extracted" if cache_dir else None
        extracted = cached if cached and cached.is_dir() else workdir / "extracted"
        if not extracted.is_dir():
            print(f"extracting {path.name} into a temporary folder")
            extract(path, extracted)
        return _tree_items(find_tree_root(extracted), lambda p: f"{path.name}:{p.relative_to(extracted).as_posix()}")
    if not path.is_dir():
        raise DataError(f"{data_dir}: not a folder, a .tar.gz/.tgz/.tar/.zip archive, parquet files or a Hugging "
                        "Face dataset")
    return _tree_items(find_tree_root(path), str)


# --- the check -------------------------------------------------------------------------------------------

def check_data(data_dir: str | Path, output_dir: Path | None = None, cache_dir: Path | None = None,
               cache_size: int | None = None, max_distance: int = NEAR_DUPLICATE_DISTANCE,
               **extra) -> tuple[dict, list[Path]]:
    """The report of `data_dir` (any source `--data-dir` takes) as a JSON-ready dict (with `extra` entries), and
    the files written into `output_dir` when given (`write_report`).  `cache_dir`: a cache of it, whose extracted
    archive is reused."""
    cache_size = cache_size or default_cache_size(224)
    with tempfile.TemporaryDirectory(prefix="datacheck-") as workdir:
        items, names, labels, skipped, class_names = _source_items(str(data_dir), Path(workdir), cache_dir)
        records = _read_all(items)
        images = []
        for split, split_records in records.items():
            for i, record in enumerate(split_records):
                if "error" in record:
                    reason = record["error"] + (f" ({record['detail']})" if "detail" in record else "")
                    skipped.append({"split": split, "file": names[split][i], "reason": reason})
                else:
                    images.append({**record, "split": split, "class": labels[split][i], "name": names[split][i]})
        report = _report(str(data_dir), images, skipped, class_names, list(items), cache_size, max_distance)
        report.update(extra)
        where = {name: (split, i) for split, split_names in names.items() for i, name in enumerate(split_names)}
        written = write_report(report, output_dir, lambda name: items[where[name][0]][where[name][1]]) \
            if output_dir is not None else []
    return report, written


def _report(source: str, images: list[dict], skipped: list[dict], class_names: list[str], splits: list[str],
            cache_size: int, max_distance: int) -> dict:
    counts = {split: dict.fromkeys(class_names, 0) for split in splits}
    for image in images:
        counts[image["split"]][image["class"]] += 1
    present = [n for n in counts.get("train", {}).values() if n]
    sizes = Counter((im["height"], im["width"]) for im in images if im["split"] == "train")
    planned = cache.planned_size(sizes, cache_size) if sizes else None
    return {
        "source": source, "class_names": class_names, "counts": counts,
        "imbalance_ratio": max(present) / min(present) if present else None,
        "missing": {split: [name for name, n in by_class.items() if n == 0] for split, by_class in counts.items()},
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(s["reason"].split(" (")[0] for s in skipped).most_common()),
        "duplicates": find_duplicates(images, max_distance),
        "sizes": {f"{h}x{w}": n for (h, w), n in sizes.most_common()},
        "modes": dict(Counter(im["mode"] for im in images).most_common()),
        "formats": dict(Counter(im["format"] for im in images).most_common()),
        "shorter_sides": [min(im["height"], im["width"]) for im in images],
        "cache": {"cache_size": cache_size, "image_size": list(planned) if planned else None,
                  "resized": sum(n for size, n in sizes.items() if size != planned)},
    }


def check_cache(data_dir: str | Path, cache_dir: Path, cache_size: int) -> tuple[dict, Path]:
    """The check of the data behind a built cache, run once per data version (its fingerprint) and kept beside
    the caches of it: (the report, the folder holding datacheck.json/.html and the figures)."""
    fingerprint = json.loads((cache_dir / "meta.json").read_text())["fingerprint"]
    folder = cache_dir.parent / f"datacheck-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"
    with FileLock(folder.with_name(folder.name + ".lock")):  # one process checks; the others then read its report
        if (folder / CHECK_FILE).exists():
            report = json.loads((folder / CHECK_FILE).read_text())
            if report.get("fingerprint") == fingerprint:
                return report, folder
        print(f"checking the data (once per data version; python -m vision_ensemble.datacheck {data_dir} runs "
              "it alone)")
        return check_data(data_dir, folder, cache_dir, cache_size, fingerprint=fingerprint)[0], folder


def leakage(report: dict) -> dict[str, int]:
    """Duplicate pairs (exact and near) across splits, per pair of splits."""
    return {kind: c["exact"] + c["near"] for kind, c in report["duplicates"]["counts"].items() if "-" in kind}


def summary_lines(report: dict, short: bool = False) -> list[str]:
    """The check in words: a table of classes per split (`short`: one line of totals), then the findings."""
    counts = report["counts"]
    if short:
        return ["data: " + ", ".join(f"{s} {sum(by_class.values()):,}" for s, by_class in counts.items())
                + f" images of {len(report['class_names'])} classes", *findings(report, short=True)]
    width = max([len("class"), *map(len, report["class_names"])])
    return [f"{'class':<{width}} " + " ".join(f"{s:>8}" for s in counts),
            *(f"{name:<{width}} " + " ".join(f"{by_class[name]:>8,}" for by_class in counts.values())
              for name in report["class_names"]),
            f"{'total':<{width}} " + " ".join(f"{sum(by_class.values()):>8,}" for by_class in counts.values()),
            *findings(report)]


def findings(report: dict, short: bool = False) -> list[str]:
    """Warnings (imbalance, missing classes), skipped files, duplicates and (unless `short`) sizes, one a line."""
    counts, lines = report["counts"], []
    ratio = report["imbalance_ratio"]
    if ratio and ratio >= IMBALANCE_WARNING_RATIO:
        train = {n: c for n, c in counts["train"].items() if c}
        big, small = max(train, key=train.get), min(train, key=train.get)
        lines.append(f"warning: imbalanced classes in train: {big} has {ratio:.1f}x the images of {small} "
                     f"({train[big]:,} vs {train[small]:,}); consider --class-weights balanced or --sampler balanced")
    for split, names in report["missing"].items():
        if names:
            lines.append(f"warning: no {split} images of {', '.join(names)}")
    if report["skipped"]:
        lines.append(f"skipped {len(report['skipped'])} file(s): "
                     + ", ".join(f"{n} {reason}" for reason, n in report["skipped_by_reason"].items()))
    dup = report["duplicates"]["counts"]
    if dup:
        lines.append("duplicates: " + "; ".join(
            f"{kind}{' (LEAKAGE)' if '-' in kind else ''} {c['exact']} exact, {c['near']} near"
            for kind, c in sorted(dup.items(), key=lambda kv: "-" not in kv[0])))
    if not short and report["sizes"]:
        c = report["cache"]
        common = ", ".join(f"{size} ({n:,})" for size, n in list(report["sizes"].items())[:3])
        lines.append(f"train image sizes (height x width): {common}; modes: "
                     + ", ".join(f"{m} {n:,}" for m, n in report["modes"].items()))
        lines.append(f"--cache-size {c['cache_size']}: cached as {c['image_size'][0]}x{c['image_size'][1]}, "
                     f"{c['resized']:,} train image(s) resized and centre-cropped to it")
    return lines


# --- files: JSON, HTML, the contact sheet and the size histogram ----------------------------------------

def _thumbnail(item) -> np.ndarray | None:
    try:
        return load_rgb(Image.fromarray(item) if isinstance(item, np.ndarray) else item, size=(96, 96))
    except ImageError:
        return None


def duplicates_figure(report: dict, read, count: int = 12, per_row: int = 2):
    """The worst pairs side by side, captioned with split, file, class (red when they differ) and how far apart;
    `read(name)` gives what load_rgb reads."""
    from ..plots import plt

    pairs = report["duplicates"]["pairs"][:count]
    rows = -(-len(pairs) // per_row)
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(2.4 * 2 * per_row, 2.5 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, pair in enumerate(pairs):
        for side, ax in zip("ab", axes[n // per_row, 2 * (n % per_row):]):
            pixels = _thumbnail(read(pair[side]))
            if pixels is not None:
                ax.imshow(pixels)
            split = pair["kind"].split("-")[0 if side == "a" else -1]
            ax.set_title(f"{split}: {Path(pair[side]).name}\nclass {pair[side + '_class']}", fontsize=7,
                         color="red" if pair["labels_differ"] else "black")
        ax.text(0.5, -0.08, "exact copy" if pair["exact"] else f"{pair['distance']} bits apart", transform=ax.transAxes,
                ha="center", va="top", fontsize=7)
    fig.suptitle("Duplicates, worst first: across splits, then with different labels, then closest", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    return fig


def sizes_figure(report: dict):
    """Histogram of the shorter sides with the cache size marked, and the image modes."""
    from ..plots import plt

    fig, (ax_size, ax_mode) = plt.subplots(1, 2, figsize=(10, 3.5), gridspec_kw={"width_ratios": [3, 1]})
    ax_size.hist(report["shorter_sides"], bins=40, color="tab:blue")
    ax_size.axvline(report["cache"]["cache_size"], color="tab:red", ls="--",
                    label=f"--cache-size {report['cache']['cache_size']}")
    ax_size.set(xlabel="shorter side (px)", ylabel="images", title="Image sizes (all splits)")
    ax_size.legend()
    ax_mode.bar(list(report["modes"]), list(report["modes"].values()), color="tab:gray")
    ax_mode.set(title="Modes", ylabel="images")
    fig.tight_layout()
    return fig


def write_report(report: dict, output_dir: Path, read) -> list[Path]:
    """datacheck.json, datacheck.html, duplicates.png (when there are any) and image_sizes.png in `output_dir`."""
    from ..plots import save

    output_dir.mkdir(parents=True, exist_ok=True)
    pairs = report["duplicates"]["pairs"][:DATACHECK_PAIRS_KEPT]
    kept = {**report, "duplicates": {**report["duplicates"], "pairs": pairs}}
    kept.pop("shorter_sides")
    paths = [output_dir / CHECK_FILE, output_dir / "datacheck.html"]
    paths[0].write_text(json.dumps(kept, indent=1))
    if report["shorter_sides"]:
        paths.append(save(sizes_figure(report), output_dir / "image_sizes.png"))
    if report["duplicates"]["pairs"]:
        paths.append(save(duplicates_figure(report, read), output_dir / "duplicates.png"))
    paths[1].write_text(_html(kept, [p.name for p in paths[2:]]))
    return paths


def _html(report: dict, figures: list[str]) -> str:
    e = html.escape
    def table(header, rows):
        return ("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                + "</table>")
    splits = list(report["counts"])
    parts = [f"<h1>Data check of <code>{e(report['source'])}</code></h1>",
             "<pre>" + e("\n".join(findings(report))) + "</pre>",
             "<h2>Classes</h2>", table(["class", *splits], [[n, *(report["counts"][s][n] for s in splits)]
                                                         for n in report["class_names"]])]
    parts += [f'<p><img src="{e(name)}" style="max-width:100%"></p>' for name in figures]
    pairs = report["duplicates"]["pairs"]
    parts += [f"<h2>Duplicates ({len(pairs)} pairs shown)</h2>",
              table(["kind", "exact", "bits apart", "file", "class", "file", "class"],
                    [[p["kind"], p["exact"], p["distance"], p["a"], p["a_class"], p["b"], p["b_class"]]
                     for p in pairs]),
              f"<h2>Skipped files ({len(report['skipped'])})</h2>",
              table(["split", "file", "reason"], [[s["split"], s["file"], s["reason"]] for s in report["skipped"]])]
    style = ("<style>body{font-family:sans-serif}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px}</style>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Data check</title>{style}</head>"
            f"<body>{''.join(parts)}</body></html>")


# --- python -m vision_ensemble.datacheck -------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vision_ensemble.datacheck", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", help="what --data-dir takes: an image-folder tree, a .tar.gz/.zip of one, parquet "
                                     "files, a `datasets` save_to_disk folder, a Hub dataset id, or cifar10")
    parser.add_argument("--output-dir", type=Path, default=Path("datacheck"),
                        help="where datacheck.json, datacheck.html, duplicates.png and image_sizes.png go")
    parser.add_argument("--cache-size", type=int, default=default_cache_size(224),
                        help="the --cache-size you will train with: the report says what it does to these images")
    parser.add_argument("--near-distance", type=int, default=NEAR_DUPLICATE_DISTANCE,
                        help="near-duplicates: perceptual hashes (64 bits) at most this many bits apart "
                             "(0: equal hashes)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.near_distance <= 16:
        print("error: --near-distance: choose 0-16 bits", file=sys.stderr)
        return 2
    try:
        report, written = check_data(args.data, args.output_dir, cache_size=args.cache_size,
                                     max_distance=args.near_distance)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(report)))
    print(f"wrote {', '.join(p.name for p in written)} to {args.output_dir}")
    return 0
