"""Latency of one classify request through gradio_client, three members at 224 px, on this machine's CPU.

    python benchmarks/app_latency.py --requests 50 --clients 8

Builds the three backbones (seresnet50, efficientnet_b0, vit_small_patch16_224; random weights: latency
does not depend on their values) as exported 224 px members, starts the real app on a free localhost port,
and measures: what Gradio alone costs per request (a no-op app), cold start (process start to first answer), each member's eager fp32 forward pass in-process, p50/p95 of `--requests` sequential
requests, and the throughput of `--clients` concurrent clients.  `--check-top3 N` also checks that the
served top-3 equals the eager fp32 ensemble's on N CIFAR-10 test images.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import timm
import torch

from vision_ensemble.ensemble import Ensemble
from vision_ensemble.model import export_model, training_data_config

MEMBERS = ("seresnet50", "efficientnet_b0", "vit_small_patch16_224")


def build_members(root: Path, size: int) -> Path:
    entries = []
    for i, name in enumerate(MEMBERS):
        torch.manual_seed(i)
        model = timm.create_model(name, num_classes=10)
        export_model(model, root / name, training_data_config(model, size), [f"class{i}" for i in range(10)])
        entries.append({"source": name, "weight": 1 / 3})
    (root / "ensemble.json").write_text(json.dumps({"members": entries, "temperature": 1.0}))
    return root / "ensemble.json"


def member_forward_ms(manifest: Path, size: int, runtime: str, repeats: int = 20) -> dict[str, float]:
    ensemble = Ensemble.from_manifest(manifest)
    if runtime == "onnx":
        ensemble.use_onnxruntime(manifest.parent)
    x = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    times = {}
    with torch.inference_mode():
        for m in ensemble.members:
            for _ in range(3):
                m.probabilities(x)
            start = time.perf_counter()
            for _ in range(repeats):
                m.probabilities(x)
            times[m.source] = (time.perf_counter() - start) / repeats * 1000
    return times


def top3_agreement(manifest: Path, archive: str, n: int) -> tuple[int, int]:
    """How many of the first n CIFAR-10 test images get the same top-3 (in order) from ORT as from eager fp32."""
    from vision_ensemble.data import load_dataset

    test = load_dataset(archive).test
    pick = np.random.default_rng(0).permutation(len(test))[:n]
    images = torch.from_numpy(test.images[pick]).permute(0, 3, 1, 2)
    eager = Ensemble.from_manifest(manifest)
    served = Ensemble.from_manifest(manifest)
    served.use_onnxruntime(manifest.parent)
    a = np.argsort(-eager.predict(images, batch_size=50)[0], axis=1)[:, :3]
    b = np.argsort(-served.predict(images, batch_size=50)[0], axis=1)[:, :3]
    return int(np.all(a == b, axis=1).sum()), n


FLOOR_APP = """
import sys, gradio as gr
with gr.Blocks() as demo:
    image, label = gr.Image(type="filepath"), gr.Label()
    gr.Button().click(lambda x: {"a": 1.0}, image, label, api_name="classify", preprocess=False)
demo.queue().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]))
"""


def launch(command: list[str]) -> tuple[subprocess.Popen, str]:
    """Start a server (`command` + a free port) and wait until it answers; returns (process, URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([*command, str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{command} did not start")


def sequential_latency(client, image, requests: int) -> str:
    """p50 and p95 of `requests` classify calls, after 5 warm-up calls."""
    for _ in range(5):
        client.predict(image, api_name="/classify")
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        client.predict(image, api_name="/classify")
        latencies.append((time.perf_counter() - start) * 1000)
    return f"p50 {np.percentile(latencies, 50):.0f} ms, p95 {np.percentile(latencies, 95):.0f} ms"


def gradio_floor(args) -> None:
    """The same request to a Gradio app that does no work: what Gradio itself costs per request here."""
    from gradio_client import Client, handle_file

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(FLOOR_APP)
    proc, url = launch([sys.executable, f.name])
    try:
        latency = sequential_latency(Client(url, verbose=False), handle_file(args.image), args.requests)
        print(f"[gradio alone] no-op endpoint, same image upload: {latency}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=6)
    p.add_argument("--image", default=str(REPO / "examples" / "china.jpg"))
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    p.add_argument("--check-top3", type=int, default=0, metavar="N",
                   help="compare ORT's top-3 with eager fp32 on N CIFAR-10 test images")
    p.add_argument("--cifar10", default=str(REPO.parent / "shared" / "data" / "cifar10.tar.gz"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = build_members(Path(tmp), args.size)
        gradio_floor(args)
        if args.check_top3:
            same, n = top3_agreement(manifest, args.cifar10, args.check_top3)
            print(f"top-3 identical (ONNX Runtime vs eager fp32): {same} of {n} CIFAR-10 test images")
        for runtime in args.runtimes:
            forward = member_forward_ms(manifest, args.size, runtime)
            print(f"[{runtime}] forward, batch 1, in-process: " +
                  ", ".join(f"{k} {v:.1f} ms" for k, v in forward.items()) + f"; sum {sum(forward.values()):.1f} ms")
            serve(manifest, args, runtime)


def serve(manifest: Path, args, runtime: str) -> None:
    from gradio_client import Client, handle_file

    launched = time.perf_counter()
    proc, url = launch([sys.executable, str(REPO / "app.py"), "--manifest", str(manifest), "--host", "127.0.0.1",
                        "--runtime", runtime, "--port"])
    try:
        client = Client(url, verbose=False)
        image = handle_file(args.image)
        client.predict(image, api_name="/classify")
        print(f"[{runtime}] cold start (process start to first answer): {time.perf_counter() - launched:.1f} s")
        print(f"[{runtime}] sequential: {args.requests} requests, {sequential_latency(client, image, args.requests)}")

        def worker():
            c = Client(url, verbose=False)
            for _ in range(args.per_client):
                c.predict(image, api_name="/classify")

        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        print(f"[{runtime}] {args.clients} concurrent clients: {args.clients * args.per_client / elapsed:.1f} requests/s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
