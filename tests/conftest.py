"""Shared fixtures and helpers: the real CIFAR-10 archive (../shared/data, read-only), small generated datasets,
tiny members, tiny training runs, the live app on a free port, and headless Chromium."""

from __future__ import annotations

import fcntl
import importlib.util
import io
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from functools import cache
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from filelock import FileLock
from PIL import Image

from vision_ensemble.config import CIFAR10_CLASSES, default_cache_size
from vision_ensemble.model import export_model, training_data_config

# Scripts run in this process (`run_in_process`) stay offline as those `run` starts (ENV) do; huggingface_hub read
# the variable once, when it was imported.
os.environ["HF_HUB_OFFLINE"] = "1"
huggingface_hub.constants.HF_HUB_OFFLINE = True

REPO = Path(__file__).resolve().parents[1]
CIFAR10_ARCHIVE = Path(os.environ.get("CIFAR10_ARCHIVE", REPO.parent / "shared" / "data" / "cifar10.tar.gz"))


@pytest.fixture(scope="session")
def cifar10_archive() -> Path:
    if not CIFAR10_ARCHIVE.exists():
        pytest.fail(f"CIFAR-10 archive not found at {CIFAR10_ARCHIVE} (set CIFAR10_ARCHIVE)")
    return CIFAR10_ARCHIVE


XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1"... when pytest-xdist runs the tests
if XDIST_WORKER:
    torch.set_num_threads(1)  # one core per worker: two workers of two threads each on 2 cores oversubscribe


# pytest-xdist (pyproject: `-n 2 --dist loadfile`) hands out whole files in collection order, the next one to the
# first worker free: the longest files go first (measured one by one, BENCHMARKS.md: the test suite), so the short ones fill
# in around them at the end rather than one long file running alone while the other worker idles.
LONGEST_FIRST = ["test_gpu_session.py", "test_time_limit.py", "test_multinode.py", "test_tracking.py",
                 "test_photo_data.py", "test_train.py", "test_labeler.py", "test_sweep.py", "test_distill.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_addoption(parser):
    parser.addoption("--cpu-report", metavar="FILE", help="append each test's CPU seconds (the worker's own and "
                     "those of the processes it started and waited for) and wall seconds to FILE, one JSON line each: "
                     "where the suite's time goes on a machine whose cores are all busy")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with machine_share(item), cpu_report(item):
        yield


@contextmanager
def machine_share(item):
    """A test marked `wall_clock` times the machine (a --time-limit run must end on time), so under xdist it runs
    alone: every test holds a shared lock on the machine from its setup to its teardown, a wall-clock test an
    exclusive one. A wall-clock test waiting for it holds a turnstile that every test passes on its way in, so
    the other worker starts nothing new meanwhile (in CI, a 1-minute run next to another worker's tests ended
    23% late, its epochs running 3x slower than it had measured them)."""
    workerinput = getattr(item.config, "workerinput", None)
    if workerinput is None:  # one process: nothing runs beside the test
        yield
        return
    base = Path(tempfile.gettempdir()) / f"vision-ensemble-tests-{workerinput['testrunuid']}"
    with open(f"{base}.turnstile", "a") as turnstile, open(f"{base}.machine", "a") as machine:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(machine, fcntl.LOCK_EX if item.get_closest_marker("wall_clock") else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_UN)


@contextmanager
def cpu_report(item):
    report = item.config.getoption("--cpu-report")
    if not report:
        yield
        return

    def cpu():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime

    (own0, children0), start = cpu(), time.monotonic()
    yield
    (own1, children1), wall = cpu(), time.monotonic() - start
    with open(report, "a") as f:  # one short line per write: the workers' lines do not interleave
        f.write(json.dumps({"test": item.nodeid, "cpu_own_s": round(own1 - own0, 2),
                            "cpu_children_s": round(children1 - children0, 2), "wall_s": round(wall, 2)}) + "\n")


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder every xdist worker of this run sees (the run's temp root; the session's own folder without xdist),
    for what is made once per run: what is made there is made under a FileLock."""
    root = tmp_path_factory.getbasetemp()
    path = (root.parent if XDIST_WORKER else root) / name
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """One decoded-data cache for the whole run, so CIFAR-10 is decoded once (the cache's own file lock keeps a
    second worker waiting for the first one's build)."""
    return shared_dir(tmp_path_factory, "cache")


@pytest.fixture(scope="session")
def cifar10(cifar10_archive, cache_root):
    """CIFAR-10 decoded once, into the cache the 32 px test runs of train/ and evaluation/ use (a cache is keyed by
    its size: another size would decode all 60,000 images again)."""
    from vision_ensemble.data import load_dataset

    return load_dataset(cifar10_archive, cache_root=cache_root, cache_size=default_cache_size(32))


def make_image_folder(root: Path, classes=("circle", "square", "stripes"), per_class=12, size=(80, 100),
                      splits=("train", "test"), fmt="png", seed=0) -> Path:
    """An image-folder tree of `size` (height, width) images whose classes are visibly different."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                if c == 0:
                    mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
                elif c == 1:
                    mask = (abs(yy - h / 2) < h / 4) & (abs(xx - w / 2) < w / 4)
                else:
                    mask = (xx // 8) % 2 == 0
                img[mask] = rng.integers(180, 255, 3, dtype=np.uint8)
                Image.fromarray(img).save(folder / f"{i:04d}.{fmt}")
    return root


# --- shared by several test files: members, tiny training runs, live servers, the browser -----------------

EXAMPLES = REPO / "examples"
FINETUNE = str(REPO / "train" / "finetune.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def tiny_run_args(archive, cache_root, output_dir, *extra):
    return ["--model", "test_resnet", "--img-size", "32", "--batch-size", "32", "--epochs", "2",
            "--data-dir", str(archive), "--cache-dir", str(cache_root), "--output-dir", str(output_dir),
            "--max-train-samples", "256", "--max-eval-samples", "101", "--no-data-check", *extra]


@pytest.fixture(scope="session")
def trained_run(cifar10, cifar10_archive, cache_root, tmp_path_factory) -> Path:
    """One tiny single-process training run (2 epochs of test_resnet, published as someone/tiny-a), shared by
    every test that only reads its folder: best/, checkpoints/, metrics.jsonl, predictions.npz."""
    out = shared_dir(tmp_path_factory, "trained_run")
    with FileLock(out.with_suffix(".lock")):
        if not (out / "done").exists():
            run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, out, "--hub-repo-id",
                                                    "someone/tiny-a"))
            (out / "done").touch()
    return out


def run(cmd, check=True, **extra_env: str):
    result = subprocess.run(cmd, env={**ENV, **extra_env}, capture_output=True, text=True, timeout=600, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@cache
def _script(path: str):
    spec = importlib.util.spec_from_file_location(f"script_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_in_process(script: str | Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    """`python script *args` as this process's call of the script's main(argv): the same code path as `run`
    without starting an interpreter and importing torch again (seconds per call). Warnings are off, as in `run`'s
    environment, and Accelerate's process-wide state is reset afterwards, as a new process would start. For tests of
    output, files and exit code; what only a real process shows (imports, sys.modules, `accelerate launch`,
    environment variables read at import) needs `run`."""
    from accelerate.state import AcceleratorState, GradientState

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = _script(str(script)).main([str(a) for a in args])
        except SystemExit as exc:  # argparse's --help and usage errors; sys.exit(message)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)  # what the interpreter prints on its way out
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()
    result = subprocess.CompletedProcess([str(script), *map(str, args)], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} {args} failed ({code}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def make_member(folder: Path, seed: int, img_size: int, classes=CIFAR10_CLASSES, sharpen: float = 1.0) -> Path:
    """A tiny timm model exported like a trained member; `sharpen` scales its logits (over-confidence)."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=len(classes))
    with torch.no_grad():
        model.fc.weight.mul_(sharpen)
        model.fc.bias.mul_(sharpen)
    return export_model(model, folder, training_data_config(model, img_size), list(classes))


def tiny_vit() -> torch.nn.Module:
    return timm.create_model("test_vit", num_classes=10, img_size=32, patch_size=4)


def make_vit_member(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = tiny_vit()
    return export_model(model, folder, training_data_config(model, 32), list(CIFAR10_CLASSES))


def write_manifest(root: Path, members: list[Path], **ensemble_args) -> Path:
    """ensemble.json in `root` for member folders inside it, sources relative as evaluate.py writes them."""
    from vision_ensemble.evaluation.ensemble import Ensemble
    from vision_ensemble.model import Member

    manifest = Ensemble([Member.load(str(m)) for m in members], **ensemble_args).manifest()
    for entry in manifest["members"]:
        entry["source"] = Path(entry["source"]).name
    path = root / "ensemble.json"
    path.write_text(json.dumps(manifest))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(manifest: Path, log_file: Path, **extra_env: str):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", **extra_env}
    process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--manifest", str(manifest), "--host",
                                "127.0.0.1", "--port", str(port)], cwd=REPO, env=env,
                               stdout=log_file.open("w"), stderr=subprocess.STDOUT)
    return process, wait_for_server(process, f"http://127.0.0.1:{port}/", log_file)


def wait_for_server(process: subprocess.Popen, url: str, log_file: Path, timeout: float = 120) -> str:
    """`url` once the server `process` answers there; its log in the error if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app exited:\n{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError(f"app did not start:\n{log_file.read_text()[-3000:]}")


@contextmanager
def running_app(manifest: Path, log_file: Path, **extra_env: str):
    """(gradio_client Client, url) of app.py serving `manifest`; the server stops when the block ends."""
    from gradio_client import Client

    process, url = start_app(manifest, log_file, **extra_env)
    try:
        yield Client(url, verbose=False), url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def app_without_weights(tmp_path_factory):
    """(url, log file, pid) of one app.py started without an ensemble, shared by the tests of that state."""
    root = tmp_path_factory.mktemp("no_weights")
    process, url = start_app(root / "missing.json", root / "app.log")
    yield url, root / "app.log", process.pid
    process.terminate()
    process.wait(timeout=30)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No sandbox (containers), and no background traffic that would keep "networkidle" from ever arriving.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                    reason="Debian's chromium is not installed")


@contextmanager
def browser_page(url: str, width: int = 1280, height: int = 1000):
    """A headless-Chromium page opened at `url` (Playwright driving Debian's chromium)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="networkidle")
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="session")
def ensemble_dir(tmp_path_factory):
    """Two tiny members (32 and 48 px) and their ensemble.json, as the Space loads them."""
    root = tmp_path_factory.mktemp("space")
    members = [make_member(root / "member_a", 0, 32, sharpen=5.0), make_member(root / "member_b", 1, 48, sharpen=5.0)]
    write_manifest(root, members, weights=[0.4, 0.6], temperature=1.3)
    return root
