"""Soak test: the real server under a steady mixed load for an hour, watching memory, descriptors and temp files.

    python benchmarks/soak.py --minutes 60 --clients 4 --pause 0.5 --out results/soak

Builds two tiny members (test_resnet at 32 and 48 px, as tests/conftest.py `make_member` does) and starts
`python app.py --manifest ... --runtime onnx` on a free localhost port, with its own GRADIO_TEMP_DIR and TMPDIR
so every file it leaves behind is counted.  `--clients` threads then cycle through `POST /api/predict`
(multipart, base64 JSON) and the Space's `/classify` and `/optimize_threshold` (gradio_client), with `--pause`
seconds between requests and every request bounded by `--timeout`; one request in ten (`--bad-fraction`) is a
bad input: corrupt, empty, oversized, not an image, a 42-megapixel image, a malformed CSV.  Good images and
CSVs are generated per request, so uploads differ as real users' do.

Every `--interval` seconds it records the server's RSS (and RssAnon), open file descriptors, threads, the
count and size of files under its temp folders, p50/p99 latency per endpoint and outcomes by status. At the
end: `soak.json` (samples, totals and the checks: no 5xx, every bad input refused with a 4xx and a message,
RSS growth after the first 10 minutes, temp files bounded) and `soak.png` in `--out`; exit status 1 if a check
fails.  The growth compares levels, the median of the last ten minutes' samples against the median of the ten
after the warm-up: memory swings by about 100 MB as the garbage collector frees request cycles, so two single
samples measure the swing.  With `--heap-probe` the server runs under benchmarks/heap_probe.py, and each sample
also holds the bytes malloc has handed out and not had back (`malloc_in_use`) and the live Python objects:
memory in use that stays flat while RSS grows is the allocator keeping freed pages, not a leak, and pymalloc's
arenas (`pymalloc`: held against in live blocks).  Every sample splits RssAnon by where it lives
(`anon_by_region`: malloc's heaps, libraries' pages, other maps).  MALLOC_ARENA_MAX, PYTHONMALLOC and other
environment variables reach the server as set; the summary records the allocator's (`allocator_env`).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import free_port, make_member, wait_for_server, write_manifest  # noqa: E402
from vision_ensemble.config import TEMP_FILE_MAX_AGE_S  # noqa: E402
from vision_ensemble.plots import plt, save  # noqa: E402

ALLOCATOR_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "PYTHONMALLOC")  # recorded in the summary
ENDPOINTS = ("api_multipart", "api_base64", "gradio_classify", "gradio_threshold")
IMAGE_BAD = ("corrupt", "empty", "oversized", "wrong_type", "huge_pixels")
CSV_BAD = ("malformed_csv", "empty", "one_class", "non_numeric", "wrong_type")


# --- inputs ------------------------------------------------------------------------------------------------

def good_image(rng: np.random.Generator) -> tuple[bytes, str]:
    """A photo-like image of random size and format: noise under a few bright rectangles."""
    h, w = int(rng.integers(48, 480)), int(rng.integers(48, 480))
    pixels = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    for _ in range(3):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        pixels[y:y + h // 3, x:x + w // 3] = rng.integers(120, 256, 3, dtype=np.uint8)
    fmt = "JPEG" if rng.random() < 0.5 else "PNG"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue(), f"photo.{fmt.lower().replace('jpeg', 'jpg')}"


def good_csv(rng: np.random.Generator) -> bytes:
    n = int(rng.integers(50, 3000))
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)
    scores = np.clip(labels * 0.3 + rng.random(n) * 0.7, 0, 1)
    return ("label,score\n" + "".join(f"{y},{s:.5f}\n" for y, s in zip(labels, scores))).encode()


class BadInputs:
    """The bad inputs, made once: (bytes, file name) for each kind."""

    def __init__(self, upload_limit: int):
        rng = np.random.default_rng(1)
        huge = io.BytesIO()  # 7000 x 6000 = 42 Mpx, one colour: a small PNG that is refused from its header
        Image.new("L", (7000, 6000), 128).save(huge, "PNG")
        self.image = {
            "corrupt": (b"\x89PNG\r\n\x1a\n" + rng.bytes(4000), "corrupt.png"),
            "empty": (b"", "empty.jpg"),
            "oversized": (b"\xff\xd8\xff\xe0" + bytes(upload_limit + 1024), "oversized.jpg"),
            "wrong_type": (b"%PDF-1.4\n" + b"not an image " * 200, "document.pdf"),
            "huge_pixels": (huge.getvalue(), "huge.png"),
        }
        self.csv = {
            "malformed_csv": (b'label,score\n1,"0.5\n0,0.2,extra,"\n\x00\x01\x02', "broken.csv"),
            "empty": (b"", "empty.csv"),
            "one_class": (b"label,score\n1,0.5\n1,0.7\n1,0.9\n", "one_class.csv"),
            "non_numeric": (b"label,score\n1,high\n0,low\n1,medium\n", "words.csv"),
            "wrong_type": (self.image["huge_pixels"][0], "image.csv"),
        }


# --- clients -------------------------------------------------------------------------------------------

class Log:
    """Every request's outcome: (time, endpoint, bad kind or '', status, message, latency ms)."""

    def __init__(self):
        self.rows, self.lock = [], threading.Lock()

    def add(self, *row):
        with self.lock:
            self.rows.append(row)


def gradio_outcome(exc: Exception) -> tuple[str, str]:
    """(status, message) of a failed gradio_client call: a gr.Error is the Space's 4xx with a message."""
    from gradio_client.exceptions import AppError

    if isinstance(exc, AppError):
        message = str(exc)
        return ("500" if "failed on the server" in message else "app_error"), message
    if isinstance(exc, httpx.HTTPStatusError):
        return str(exc.response.status_code), exc.response.text[:200]
    if isinstance(exc, TimeoutError):
        return "timeout", ""
    return f"exception:{type(exc).__name__}", str(exc)[:200]


def client_loop(index: int, url: str, args, bad: BadInputs, log: Log, stop: threading.Event, tmp: Path):
    from gradio_client import Client, handle_file

    rng = np.random.default_rng(100 + index)
    http = httpx.Client(base_url=url, timeout=args.timeout)
    gradio = Client(url, verbose=False, download_files=False)
    step = index
    while not stop.is_set():
        endpoint = ENDPOINTS[step % len(ENDPOINTS)]
        step += 1
        is_bad = rng.random() < args.bad_fraction
        kinds = CSV_BAD if endpoint == "gradio_threshold" else IMAGE_BAD
        kind = str(rng.choice(kinds)) if is_bad else ""
        if endpoint == "gradio_threshold":
            data, name = bad.csv[kind] if is_bad else (good_csv(rng), "scores.csv")
        else:
            data, name = bad.image[kind] if is_bad else good_image(rng)
        start = time.perf_counter()
        try:
            if endpoint == "api_multipart":
                response = http.post("/api/predict", files={"image": (name, data)}, data={"top_k": "3"})
                status, message = str(response.status_code), response.json().get("error", "")
            elif endpoint == "api_base64":
                response = http.post("/api/predict", json={"image": base64.b64encode(data).decode(), "top_k": 2})
                status, message = str(response.status_code), response.json().get("error", "")
            elif kind == "oversized":  # gradio_client refuses it itself, as the browser does: ask the server
                response = http.post("/gradio_api/upload", files={"files": (name, data)})
                status, message = str(response.status_code), response.text[:200]
            else:
                path = tmp / f"client{index}-{name}"  # gradio_client uploads files by path
                path.write_bytes(data)
                if endpoint == "gradio_classify":
                    job = gradio.submit(handle_file(str(path)), api_name="/classify")
                else:
                    label, score = ("label", "score") if not is_bad else (None, None)
                    job = gradio.submit(handle_file(str(path)), label, score, "(auto)", "f1", 1, 1, 1, 0.9, 0.9,
                                        api_name="/optimize_threshold")
                job.result(timeout=args.timeout)
                status, message = "200", ""
        except Exception as exc:  # noqa: BLE001 - every failure is an outcome to record
            status, message = gradio_outcome(exc)
        log.add(time.time(), endpoint, kind, status, message, (time.perf_counter() - start) * 1000)
        stop.wait(args.pause)


# --- the server's vital signs ---------------------------------------------------------------------------

def folder_usage(root: Path, since: float) -> tuple[int, int, int, float]:
    """(files, directories, bytes) under `root`, and the age in seconds of the oldest file made after `since` (the
    load's start: files the app made at start-up, its cached examples, are kept on purpose)."""
    files = dirs = size = 0
    oldest = time.time()
    for folder, subdirs, names in os.walk(root):
        dirs += len(subdirs)
        for name in names:
            try:
                stat = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            size += stat.st_size
            files += 1
            if stat.st_mtime >= since:
                oldest = min(oldest, stat.st_mtime)
    return files, dirs, size, time.time() - oldest


def rss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


MALLOC_HEAP_ALIGN = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: a thread arena's heap starts at a multiple of it


def anon_by_region(pid: int) -> dict:
    """Resident anonymous bytes of the server by where they live (/proc/PID/smaps): `malloc_main` (the main arena,
    [heap]), `malloc_threads` (the other arenas' heaps: nameless mappings that start on a 64 MiB boundary),
    `files` (copied-on-write pages of mapped files: libraries' data) and `other` (the rest: Python's object arenas,
    malloc's mmapped blocks, thread stacks, libraries' own maps).  Together they are RssAnon."""
    regions = {"malloc_main": 0, "malloc_threads": 0, "files": 0, "other": 0}
    region = "other"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header: range perms offset dev inode [path]
            path = fields[5] if len(fields) > 5 else ""
            aligned = int(fields[0].split("-")[0], 16) % MALLOC_HEAP_ALIGN == 0
            region = ("malloc_main" if path == "[heap]" else "files" if path.startswith("/") else
                      "malloc_threads" if not path and aligned else "other")
        elif fields[0] == "Anonymous:":
            regions[region] += int(fields[1]) * 1024
    return regions


def last_heap_sample(path: Path | None) -> dict:
    """The heap probe's latest line, if it runs."""
    if path is None or not path.exists():
        return {}
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def sample(process: psutil.Process, temp_root: Path, rows: list, since: float, started: float,
           heap_file: Path | None = None) -> dict:
    files, dirs, size, oldest_s = folder_usage(temp_root, started)
    heap = last_heap_sample(heap_file)
    window = [r for r in list(rows) if r[0] >= since]
    latency = {}
    for endpoint in ENDPOINTS:
        ok = [r[5] for r in window if r[1] == endpoint and r[3] == "200"]
        if ok:
            latency[endpoint] = {"p50": float(np.percentile(ok, 50)), "p99": float(np.percentile(ok, 99)), "n": len(ok)}
    with process.oneshot():
        return {"minute": round((time.time() - started) / 60, 2), "rss": process.memory_info().rss,
                "rss_anon": rss_anon(process.pid), "anon_by_region": anon_by_region(process.pid),
                "fds": process.num_fds(), "threads": process.num_threads(),
                "temp_files": files, "temp_dirs": dirs, "temp_bytes": size,
                "temp_oldest_s": round(oldest_s), "latency_ms": latency,
                "outcomes": dict(Counter(r[3] for r in window)), "requests": len(window),
                **({"malloc_in_use": heap["in_use"], "malloc_heap": heap["heap"], "malloc_mmapped": heap["mmapped"],
                    "python_blocks": heap["python_blocks"], "pymalloc": heap.get("pymalloc", {}),
                    "gc_objects": heap["gc_objects"],
                    "top_types": heap["top_types"]} if heap else {})}


# --- the verdict ---------------------------------------------------------------------------------------

def checks(rows: list, samples: list[dict], warmup_min: float, temp_max_age_s: float) -> dict:
    good = [r for r in rows if not r[2]]
    bad = [r for r in rows if r[2]]
    server_errors = [r for r in rows if r[3].startswith("5") or r[3].startswith("exception") or r[3] == "timeout"]
    bad_refused = [r for r in bad if (r[3].startswith("4") or r[3] == "app_error") and r[4].strip()]
    after = [s for s in samples if s["minute"] >= warmup_min] or samples[-1:]
    rss_growth = (after[-1]["rss"] / after[0]["rss"] - 1) * 100
    # Levels, not two samples (the module docstring says why).
    first_window = [s["rss"] for s in after if s["minute"] < after[0]["minute"] + 10]
    last_window = [s["rss"] for s in after if s["minute"] > after[-1]["minute"] - 10]
    level_growth = float((np.median(last_window) / np.median(first_window) - 1) * 100)
    heap_growth = {key: (after[-1][key] / after[0][key] - 1) * 100 for key in ("malloc_in_use", "gc_objects")
                   if key in after[0] and key in after[-1]}
    half = samples[len(samples) // 2:]
    oldest_temp_s = max(s.get("temp_oldest_s", 0) for s in samples)
    return {
        "requests": len(rows), "good_requests": len(good), "bad_requests": len(bad),
        "good_ok": sum(r[3] == "200" for r in good),
        "server_errors": len(server_errors), "server_error_examples": [list(r[1:5]) for r in server_errors[:5]],
        "bad_refused_with_message": len(bad_refused),
        "bad_not_refused_examples": [list(r[1:5]) for r in bad if r not in bad_refused][:5],
        "rss_mb_at_warmup": after[0]["rss"] / 2**20, "rss_mb_at_end": after[-1]["rss"] / 2**20,
        "rss_growth_after_warmup_pct": rss_growth, "rss_level_growth_after_warmup_pct": level_growth,
        **{f"{key}_growth_after_warmup_pct": value for key, value in heap_growth.items()},
        "temp_files_max_second_half": max(s["temp_files"] for s in half),
        "temp_files_max_first_half": max(s["temp_files"] for s in samples[:max(1, len(samples) // 2)]),
        "temp_oldest_file_max_s": oldest_temp_s,
        "pass": {
            "no_5xx": not server_errors,
            "every_good_request_ok": len(good) == sum(r[3] == "200" for r in good),
            "every_bad_input_4xx_with_message": len(bad_refused) == len(bad),
            "rss_growth_at_most_5pct": level_growth <= 5,
            # bounded by age (their count follows the request rate): no upload or result outlives the app's maximum
            # age by more than one sweep (a third of it) and a minute
            "temp_files_bounded": oldest_temp_s <= temp_max_age_s * 4 / 3 + 60,
        },
    }


def plot(samples: list[dict], path: Path) -> None:
    minutes = [s["minute"] for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    ax.plot(minutes, [s["rss"] / 2**20 for s in samples], label="RSS")
    ax.plot(minutes, [s["rss_anon"] / 2**20 for s in samples], label="RssAnon")
    if all("malloc_in_use" in s for s in samples):
        ax.plot(minutes, [s["malloc_in_use"] / 2**20 for s in samples], label="malloc in use")
    if all("anon_by_region" in s for s in samples):
        regions = [s["anon_by_region"] for s in samples]
        ax.plot(minutes, [(r["malloc_main"] + r["malloc_threads"]) / 2**20 for r in regions], ":",
                label="anon: malloc's heaps")
        ax.plot(minutes, [r["other"] / 2**20 for r in regions], ":", label="anon: other maps")
    if all(s.get("pymalloc") for s in samples):
        ax.plot(minutes, [s["pymalloc"]["arenas_bytes"] / 2**20 for s in samples], "--", label="pymalloc's arenas")
        ax.plot(minutes, [s["pymalloc"]["allocated_bytes"] / 2**20 for s in samples], "--",
                label="pymalloc: live blocks")
    ax.set(title="server memory", ylabel="MiB", ylim=(0, None))
    ax.legend()
    ax = axes[0, 1]
    ax.plot(minutes, [s["fds"] for s in samples], label="open file descriptors")
    ax.plot(minutes, [s["threads"] for s in samples], label="threads")
    ax.set(title="descriptors and threads", ylim=(0, None))
    ax.legend()
    ax = axes[1, 0]
    ax.plot(minutes, [s["temp_files"] for s in samples], label="files")
    ax.plot(minutes, [s["temp_dirs"] for s in samples], label="folders")
    ax.set(title="server temp folders (Gradio cache + TMPDIR)", xlabel="minute", ylim=(0, None))
    ax.legend(loc="upper left")
    twin = ax.twinx()
    twin.plot(minutes, [s["temp_bytes"] / 2**20 for s in samples], color="gray", linestyle=":", label="MiB")
    twin.set(ylabel="MiB", ylim=(0, None))
    ax = axes[1, 1]
    for endpoint in ENDPOINTS:
        for q, style in (("p50", "-"), ("p99", "--")):
            points = [(s["minute"], s["latency_ms"][endpoint][q]) for s in samples if endpoint in s["latency_ms"]]
            if points:
                ax.plot(*zip(*points), style, label=f"{endpoint} {q}")
    ax.set(title="latency of good requests", xlabel="minute", ylabel="ms", yscale="log")
    ax.legend(fontsize=7, ncol=2)
    for a in axes.flat:
        a.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="how long the load runs")
    p.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    p.add_argument("--pause", type=float, default=0.5, help="seconds each client waits between requests")
    p.add_argument("--bad-fraction", type=float, default=0.1, help="share of requests that send a bad input")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between samples of the server")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take before it counts as failed")
    p.add_argument("--warmup-minutes", type=float, default=10.0, help="RSS growth is measured after this")
    p.add_argument("--upload-limit-mb", type=float, default=2.0,
                   help="the server's upload limit (VISION_ENSEMBLE_MAX_UPLOAD_BYTES), so oversized inputs stay cheap")
    p.add_argument("--temp-max-age", type=int, default=None,
                   help="the server's VISION_ENSEMBLE_TEMP_MAX_AGE_S (default: the app's, 900 s), for shorter runs")
    p.add_argument("--heap-probe", action="store_true",
                   help="run the server under benchmarks/heap_probe.py: malloc's memory in use and live objects too")
    p.add_argument("--out", default=str(REPO / "results" / "soak"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    members = [make_member(work / "member_a", 0, 32, sharpen=5.0), make_member(work / "member_b", 1, 48, sharpen=5.0)]
    manifest = write_manifest(work, members, weights=[0.4, 0.6], temperature=1.3)
    temp_root = work / "server-tmp"
    (temp_root / "gradio").mkdir(parents=True)
    upload_limit = int(args.upload_limit_mb * 2**20)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1",
           "GRADIO_TEMP_DIR": str(temp_root / "gradio"), "TMPDIR": str(temp_root),
           "VISION_ENSEMBLE_MAX_UPLOAD_BYTES": str(upload_limit)}
    if args.temp_max_age is not None:
        env["VISION_ENSEMBLE_TEMP_MAX_AGE_S"] = str(args.temp_max_age)
    port = free_port()
    log_file = out / "server.log"
    heap_file = out / "heap.jsonl" if args.heap_probe else None
    if heap_file is not None:
        heap_file.unlink(missing_ok=True)
    probe = [str(REPO / "benchmarks" / "heap_probe.py"), str(heap_file), str(args.interval / 2)] if heap_file else []
    server = subprocess.Popen([sys.executable, *probe, str(REPO / "app.py"), "--manifest", str(manifest),
                               "--runtime", "onnx",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=REPO, env=env,
                              stdout=log_file.open("w"), stderr=subprocess.STDOUT)
    url = wait_for_server(server, f"http://127.0.0.1:{port}/", log_file, timeout=600)  # a loaded machine starts slowly
    process, bad, log, stop = psutil.Process(server.pid), BadInputs(upload_limit), Log(), threading.Event()
    client_tmp = work / "client-files"
    client_tmp.mkdir()
    threads = [threading.Thread(target=client_loop, args=(i, url, args, bad, log, stop, client_tmp), daemon=True)
               for i in range(args.clients)]
    started = time.time()
    samples = [sample(process, temp_root, log.rows, started, started, heap_file)]
    print(f"soak: {args.clients} clients, {args.pause} s pauses, {args.minutes} min against {url}; server pid "
          f"{server.pid}, temp files under {temp_root}", flush=True)
    for t in threads:
        t.start()
    try:
        while time.time() - started < args.minutes * 60:
            since = time.time()
            stop.wait(min(args.interval, max(1.0, started + args.minutes * 60 - since)))
            if server.poll() is not None:
                raise SystemExit(f"the server exited ({server.returncode}); see {log_file}")
            samples.append(sample(process, temp_root, log.rows, since, started, heap_file))
            s = samples[-1]
            print(f"[{s['minute']:6.1f} min] RSS {s['rss'] / 2**20:.0f} MiB (anon {s['rss_anon'] / 2**20:.0f}), "
                  f"{s['fds']} fds, {s['threads']} threads, temp {s['temp_files']} files / {s['temp_dirs']} dirs / "
                  f"{s['temp_bytes'] / 2**20:.1f} MiB, "
                  + (f"malloc in use {s['malloc_in_use'] / 2**20:.0f} MiB, {s['gc_objects']} objects, "
                     if "gc_objects" in s else "")
                  + (f"pymalloc {s['pymalloc']['arenas_bytes'] / 2**20:.0f} MiB "
                     f"({s['pymalloc']['allocated_bytes'] / 2**20:.0f} live), " if s.get("pymalloc") else "")
                  + "anon " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in s["anon_by_region"].items()) + " MiB, "
                  + f"{s['requests']} requests {s['outcomes']}, p50 "
                  + ", ".join(f"{k} {v['p50']:.0f}" for k, v in s["latency_ms"].items()), flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=args.timeout + 5)
        server.terminate()
        server.wait(timeout=30)
    verdict = checks(log.rows, samples, args.warmup_minutes,
                     args.temp_max_age if args.temp_max_age is not None else TEMP_FILE_MAX_AGE_S)
    by_kind = defaultdict(Counter)
    for r in log.rows:
        by_kind[f"{r[1]}:{r[2] or 'good'}"][r[3]] += 1
    verdict["outcomes_by_endpoint_and_input"] = {k: dict(v) for k, v in sorted(by_kind.items())}
    # Gradio logs a traceback for every gr.Error too; only the others are the server failing.
    tracebacks = log_file.read_text().split("Traceback (most recent call last):")[1:]
    verdict["server_log_tracebacks_not_gr_error"] = sum("gradio.exceptions.Error:" not in t for t in tracebacks)
    summary = {"args": vars(args), "allocator_env": {k: os.environ.get(k) for k in ALLOCATOR_ENV}, "checks": verdict,
               "samples": samples}
    (out / "soak.json").write_text(json.dumps(summary, indent=1))
    plot(samples, out / "soak.png")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(verdict, indent=1))
    raise SystemExit(0 if all(verdict["pass"].values()) else 1)


if __name__ == "__main__":
    main()
