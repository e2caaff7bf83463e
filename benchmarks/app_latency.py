"""Latency of a prediction through the JSON API and through Gradio's /classify, on this machine's CPU.

    python benchmarks/app_latency.py --sizes recipe 224 --runtimes onnx --requests 50 --clients 8

Builds the three backbones (seresnet50, efficientnet_b0, vit_small_patch16_224; random weights exported
through vision_ensemble.model.export_model: latency does not depend on their values) as members at their
recipes' input sizes (64, 64 and 32 px, the ViT with patch size 4) and at 224 px, starts the real app on a
free localhost port, and measures: what Gradio alone costs per request (a no-op app), cold start (process
start to first answer), each member's forward pass in-process, and p50/p95 of `POST /api/predict` (httpx,
multipart) and of Gradio's `/classify` (gradio_client) with 1 client (`--requests` in a row) and with
`--clients` concurrent clients (`--per-client` requests each).  `--check-top3 N` also checks that the
served top-3 equals the eager fp32 ensemble's on N CIFAR-10 test images.  `--manifest models/cifar10` measures
that ensemble (the shipped one) instead of building members:

    python benchmarks/app_latency.py --manifest models/cifar10 --no-floor --requests 100
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

from vision_ensemble.config import CIFAR10_CLASSES, RECIPES
from vision_ensemble.evaluation.ensemble import Ensemble
from vision_ensemble.images import load_rgb
from vision_ensemble.model import export_model, training_data_config

MEMBERS = ("seresnet50", "efficientnet_b0", "vit_small_patch16_224")


def build_members(root: Path, size: str) -> Path:
    """Members at `size` px, or at their recipes' sizes (and the recipe ViT's patch size) for size 'recipe'."""
    entries = []
    for i, name in enumerate(MEMBERS):
        torch.manual_seed(i)
        recipe = RECIPES[name] if size == "recipe" else {"img_size": int(size)}
        model = timm.create_model(name, num_classes=10, **recipe.get("model_kwargs", {}))
        export_model(model, root / name, training_data_config(model, recipe["img_size"]), list(CIFAR10_CLASSES))
        entries.append({"source": name, "weight": 1 / 3})
    (root / "ensemble.json").write_text(json.dumps({"members": entries, "temperature": 1.0}))
    return root / "ensemble.json"


def time_ms(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def member_forward_ms(manifest: Path, image: str, runtime: str, onnx_folder: Path) -> dict[str, float]:
    """In-process: decoding the upload, then each member's preprocessing (resize, normalise) and network, the
    network at the batch the Space runs it at (2 with flip TTA: the image and its mirror)."""
    ensemble = Ensemble.from_manifest(manifest)
    if runtime == "onnx":
        ensemble.use_onnxruntime(onnx_folder)
    data = Path(image).read_bytes()
    x = torch.from_numpy(load_rgb(data)).permute(2, 0, 1)[None]
    times = {"decode": time_ms(lambda: load_rgb(data))}
    with torch.inference_mode():
        for m in ensemble.members:
            times[f"{m.source} resize"] = time_ms(lambda: m.transform(x))
            model_input = m.transform(x)
            if ensemble.tta_flip:
                model_input = torch.cat([model_input, model_input.flip(3)])
            times[f"{m.source} network"] = time_ms(lambda: m.logits(model_input))
    return times


def single_graph_ms(manifest: Path, folder: Path, input_size: int = 32, requests: int = 40) -> dict[str, str]:
    """The whole ensemble as one ONNX graph (python -m vision_ensemble.onnx_export --single-graph), fp32 and
    int8, batch 1 of uint8 input_size px images: p50/p95 of session.run in-process."""
    from vision_ensemble.model.runtime import inference_session
    from vision_ensemble.serving.onnx_export import export

    summary = export(Ensemble.from_manifest(manifest), folder, single_graph=True, input_size=input_size,
                     quantize="int8")
    x = np.random.default_rng(0).integers(0, 256, (1, 3, input_size, input_size), dtype=np.uint8)
    times = {}
    for name in ("ensemble", "ensemble_int8"):
        session = inference_session(summary["files"][name])
        times[name] = percentiles(sequential_latency(lambda: session.run(None, {"input": x}), requests))
    return times


def top3_agreement(manifest: Path, archive: str, n: int, onnx_folder: Path) -> tuple[int, int]:
    """How many of the first n CIFAR-10 test images get the same top-3 (in order) from ORT as from eager fp32."""
    from vision_ensemble.data import load_dataset

    test = load_dataset(archive).test
    pick = np.random.default_rng(0).permutation(len(test))[:n]
    images = torch.from_numpy(test.images[pick]).permute(0, 3, 1, 2)
    eager = Ensemble.from_manifest(manifest)
    served = Ensemble.from_manifest(manifest)
    served.use_onnxruntime(onnx_folder)
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


def percentiles(latencies: list[float]) -> str:
    return f"p50 {np.percentile(latencies, 50):.0f} ms, p95 {np.percentile(latencies, 95):.0f} ms"


def sequential_latency(call, requests: int) -> list[float]:
    """Latencies (ms) of `requests` calls in a row, after 5 warm-up calls."""
    for _ in range(5):
        call()
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def concurrent_latency(make_call, clients: int, per_client: int) -> tuple[list[float], float]:
    """Latencies (ms) of every call of `clients` threads making `per_client` calls each, and requests/s; client i
    is `make_call(i)`."""
    calls = [make_call(i) for i in range(clients)]  # clients connect before the clock starts
    latencies, lock = [], threading.Lock()

    def worker(call):
        for _ in range(per_client):
            start = time.perf_counter()
            call()
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=worker, args=(call,)) for call in calls]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, len(latencies) / (time.perf_counter() - start)


def gradio_floor(args) -> None:
    """The same request to a Gradio app that does no work: what Gradio itself costs per request here."""
    from gradio_client import Client, handle_file

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(FLOOR_APP)
    proc, url = launch([sys.executable, f.name])
    try:
        client, image = Client(url, verbose=False), handle_file(args.image)
        latency = sequential_latency(lambda: client.predict(image, api_name="/classify"), args.requests)
        print(f"[gradio alone] no-op endpoint, same image upload: {percentiles(latency)}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["recipe", "224"],
                   help="member input sizes: 'recipe' (64/64/32 px) and/or a size in px for all three")
    p.add_argument("--requests", type=int, default=50, help="requests in a row for the 1-client numbers")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=6)
    p.add_argument("--image", default=str(REPO / "examples" / "china.jpg"))
    p.add_argument("--runtimes", nargs="+", default=["onnx"], choices=["torch", "onnx"])
    p.add_argument("--no-floor", action="store_true", help="skip the no-op Gradio app measurement")
    p.add_argument("--in-process-only", action="store_true",
                   help="only the in-process numbers (forward passes, the one-graph ONNX export): no servers")
    p.add_argument("--check-top3", type=int, default=0, metavar="N",
                   help="compare ORT's top-3 with eager fp32 on N CIFAR-10 test images")
    p.add_argument("--cifar10", default=str(REPO.parent / "shared" / "data" / "cifar10.tar.gz"))
    p.add_argument("--manifest", help="measure this ensemble (e.g. models/cifar10, the shipped one) instead of "
                   "building the --sizes members")
    args = p.parse_args()
    print(f"image {args.image} ({Path(args.image).stat().st_size:,} bytes); torch threads {torch.get_num_threads()}")
    if not (args.no_floor or args.in_process_only):
        gradio_floor(args)
    if args.manifest:
        manifest = Path(args.manifest)
        manifest = manifest / "ensemble.json" if manifest.is_dir() else manifest
        with tempfile.TemporaryDirectory() as tmp:
            measure(manifest, Path(tmp), args, str(args.manifest))
        return
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = build_members(Path(tmp), size)
            measure(manifest, Path(tmp), args, "recipe sizes (64/64/32 px)" if size == "recipe" else f"{size} px")


def measure(manifest: Path, tmp: Path, args, label: str) -> None:
    """Every number for one ensemble: the top-3 check, each runtime in-process and served, the one-graph export."""
    if args.check_top3:
        same, n = top3_agreement(manifest, args.cifar10, args.check_top3, tmp / "members")
        print(f"[{label}] top-3 identical (ONNX Runtime vs eager fp32): {same} of {n} CIFAR-10 test images")
    for runtime in args.runtimes:
        forward = member_forward_ms(manifest, args.image, runtime, tmp / "members")
        print(f"[{label}, {runtime}] in-process, one image: " + ", ".join(f"{k} {v:.1f} ms" for k, v in forward.items())
              + f"; sum {sum(forward.values()):.1f} ms")
        if not args.in_process_only:
            serve(manifest, args, runtime, label)
    graph = single_graph_ms(manifest, tmp / "onnx")
    print(f"[{label}] one ONNX graph, uint8 32 px batch 1, in-process: fp32 {graph['ensemble']}, "
          f"int8 {graph['ensemble_int8']}")


def serve(manifest: Path, args, runtime: str, label: str) -> None:
    import httpx
    from gradio_client import Client, handle_file

    launched = time.perf_counter()
    proc, url = launch([sys.executable, str(REPO / "app.py"), "--manifest", str(manifest), "--host", "127.0.0.1",
                        "--runtime", runtime, "--port"])
    try:
        image_bytes = Path(args.image).read_bytes()
        server_ms = []  # the ensemble's own time, as the API reports it

        def api_call(http):
            def call():
                response = http.post("/api/predict", files={"image": ("image.jpg", image_bytes)})
                response.raise_for_status()
                server_ms.append(response.json()["latency_ms"])
            return call

        def gradio_call(client):
            image = handle_file(args.image)
            return lambda: client.predict(image, api_name="/classify")

        def person(i: int) -> dict[str, str]:
            """Client i's headers: the app trusts X-Forwarded-For from localhost (config.FORWARDED_ALLOW_IPS), so
            each concurrent client is a person of its own to the per-client admission rule, not one script."""
            return {"X-Forwarded-For": f"10.0.{i // 250}.{1 + i % 250}"}

        api_call(httpx.Client(base_url=url, timeout=120))()
        print(f"[{label}, {runtime}] cold start (process start to first answer): {time.perf_counter() - launched:.1f} s")
        for name, make_call in (
                ("POST /api/predict", lambda i: api_call(httpx.Client(base_url=url, timeout=120, headers=person(i)))),
                ("Gradio /classify", lambda i: gradio_call(Client(url, verbose=False, headers=person(i))))):
            server_ms.clear()
            one = sequential_latency(make_call(0), args.requests)
            measured = server_ms[-args.requests:]  # not the warm-up calls
            ensemble_time = f"; ensemble time in the server p50 {np.percentile(measured, 50):.0f} ms" if measured else ""
            print(f"[{label}, {runtime}] {name}, 1 client, {args.requests} requests: {percentiles(one)}{ensemble_time}")
            many, throughput = concurrent_latency(make_call, args.clients, args.per_client)
            print(f"[{label}, {runtime}] {name}, {args.clients} concurrent clients x {args.per_client}: "
                  f"{percentiles(many)}, {throughput:.1f} requests/s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
