"""The server under a crowd (issue 32): more clients at once than two cores serve, each posting a 12-MP photo.

    python benchmarks/overload.py --manifest models/cifar10 --clients 50 200 1000
    python benchmarks/overload.py --clients 20 --fairness      # also: one greedy script against browsers

Starts the real server (`python app.py --manifest M --host 127.0.0.1 --port P`, its admission at the config's
defaults unless --slots/--queue are given) and writes one 12-MP JPEG (4000x3000, noise on a gradient, quality 90:
about 6.7 MB) to a temporary folder.  For each crowd size N, N clients start at once (httpx async, one connection
each, each from its own loopback address 127.0.x.y so the server tells them apart as it would N people; localhost
only), each posting the photo to `POST /api/predict` (multipart) once, within --client-timeout seconds.  Meanwhile
every 0.2 s (50 at most) a probe client posts the photo from an address of its own, reading while it uploads (httpx
writes the whole body before it reads, so its time to a 503 includes the upload the server drains and drops), and
/api/health is asked for the queue.  The server's RSS is sampled every 20 ms (psutil).  After each crowd, once the
queue is empty, a small image is posted: the server must answer it normally.

Measured per crowd: answers by status, connection errors and time-outs, p50/p99 latency of the admitted (200) as the
clients see it and by the server's clock from the upload's arrival to the answer (its /metrics histogram: on these
shared cores a client's own time, and the pace of its upload, include waiting for the load generator), the time to
a 503 as httpx sees it (upload included), as the probes see it (the status line while still uploading) and as the
server measured it (its share under 100 ms), whether every 503 carried Retry-After, the peak RSS against the idle
server's (after one warm-up request), /api/health's latency during the crowd, and the request after.

--fairness: a script at one address keeps --script-concurrency requests going for --fairness-seconds (after a 503 a
worker waits what Retry-After says), while --browsers people, each at an address of their own, arrive at even
intervals and post once: with the per-client rule (config.WAITING_PER_CLIENT) and without it (a server started
with VISION_ENSEMBLE_WAITING_PER_CLIENT as large as its queue).  Prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from conftest import EXAMPLES, free_port, wait_for_server  # noqa: E402

HOST = "127.0.0.1"
MAX_CLIENTS = 5000  # loopback addresses 127.0.1.1 onwards, 250 to a block
PROBES = 50  # at most, one every 0.2 s while a crowd lasts; a refused probe stops uploading at its 503


def write_photo(folder: Path, width: int = 4000, height: int = 3000) -> Path:
    """A 12-MP JPEG that compresses as a photo does (noise on a colour gradient, quality 90: about 6.7 MB)."""
    rng = np.random.default_rng(0)
    y, x = np.linspace(0, 1, height)[:, None], np.linspace(0, 1, width)[None, :]
    gradient = 255 * np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)), (1 - x) * y],
                              axis=2)
    pixels = np.clip(gradient + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
    path = folder / "photo_12mp.jpg"
    Image.fromarray(pixels).save(path, "JPEG", quality=90)
    return path


@dataclass
class Outcome:
    status: str  # "200", "503", ... or the error: "timeout", "ConnectError", ...
    seconds: float
    retry_after: int | None = None  # seconds, as the Retry-After header said


def client_address(block: int, i: int) -> str:
    return f"127.{block}.{1 + i // 250}.{1 + i % 250}"


async def post_photo(url: str, source: str, photo: bytes, timeout: float) -> Outcome:
    """One client: its own connection from `source`, one multipart POST of the photo (read in 64 KB chunks)."""
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=False)  # plain http: no CA bundle to load
    async with httpx.AsyncClient(transport=transport, base_url=url, timeout=timeout) as client:
        start = time.perf_counter()
        try:
            response = await asyncio.wait_for(client.post(
                "/api/predict", files={"image": ("photo.jpg", io.BytesIO(photo), "image/jpeg")}), timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return Outcome("timeout", time.perf_counter() - start)
        except httpx.TransportError as exc:
            return Outcome(type(exc).__name__, time.perf_counter() - start)
        retry_after = response.headers.get("retry-after")
        return Outcome(str(response.status_code), time.perf_counter() - start,
                       int(retry_after) if retry_after is not None else None)


async def probe(port: int, source: str, head: bytes, body: bytes, timeout: float) -> Outcome:
    """A client that reads while it uploads: (status, seconds to the status line)."""
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    except OSError as exc:
        return Outcome(type(exc).__name__, time.perf_counter() - start)

    async def upload():
        writer.write(head)
        for i in range(0, len(body), 65536):
            writer.write(body[i:i + 65536])
            await writer.drain()

    sender = asyncio.create_task(upload())
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        return Outcome(status_line.split()[1].decode() if status_line else "closed", time.perf_counter() - start)
    except (asyncio.TimeoutError, OSError) as exc:
        return Outcome("timeout" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__,
                       time.perf_counter() - start)
    finally:
        sender.cancel()
        writer.close()


class PeakRSS:
    """The server's RSS every 20 ms in a thread: `peak` since the last `reset`."""

    def __init__(self, pid: int):
        self.process, self.peak, self.samples = psutil.Process(pid), 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.02):
            rss = self.process.memory_info().rss
            self.peak = max(self.peak, rss)
            self.samples.append(rss)

    def reset(self):
        self.peak, self.samples = 0, []

    def stop(self):
        self._stop.set()
        self._thread.join()


# (histogram, labels) the crowd's rows read: the 503s' whole time, and the answered requests' time after their upload
SERVER_CLOCKS = {"refused": ("vision_ensemble_request_seconds", {"status": "503"}),
                 "answered": ("vision_ensemble_answer_after_upload_seconds", {})}


def server_clocks(http: httpx.Client) -> dict[str, dict[float, float]]:
    """POST /api/predict's answers so far in each of SERVER_CLOCKS' histograms, from one read of /metrics:
    {kind: {bucket's upper bound in seconds: answers within it}}."""
    samples = [s for family in text_string_to_metric_families(http.get("/metrics").text) for s in family.samples
               if s.name.endswith("_bucket") and s.labels.get("route") == "api"]
    return {kind: {float(s.labels["le"]): s.value for s in samples if s.name == f"{histogram}_bucket"
                   and all(s.labels.get(k) == v for k, v in labels.items())}
            for kind, (histogram, labels) in SERVER_CLOCKS.items()}


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile: the q-quantile, linear within the bucket it falls in (the largest finite
    bound where that is the +Inf bucket)."""
    bounds = sorted(buckets)
    rank, below, lower = q * buckets[bounds[-1]], 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-12)
        below, lower = buckets[bound], bound
    return lower


def percentile_text(values: list[float], qs=(50, 99), scale: float = 1.0, digits: int = 2) -> str:
    return " / ".join(f"{np.percentile(values, q) * scale:.{digits}f}" for q in qs) if values else "-"


def wait_until_idle(http: httpx.Client, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (queue := http.get("/api/health").json()["queue"])["running"] + queue["waiting"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"the queue did not empty within {timeout:.0f} s: {queue}")
        time.sleep(0.1)


class Server:
    """app.py on a free port, its log in `folder`."""

    def __init__(self, manifest: str, folder: Path, extra_args: list[str], **env: str):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/"
        self.log = folder / f"app-{self.port}.log"
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), "--manifest", manifest, "--host", HOST, "--port", str(self.port),
             *extra_args], cwd=REPO, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **env})
        wait_for_server(self.process, self.url, self.log, timeout=300)
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def post(self, path: Path) -> httpx.Response:
        with path.open("rb") as f:
            return self.http.post("/api/predict", files={"image": (path.name, f)})

    def stop(self):
        self.http.close()
        self.process.terminate()
        self.process.wait(timeout=60)


async def crowd(server: Server, n: int, photo: bytes, probe_request: tuple[bytes, bytes], timeout: float) -> dict:
    """N clients at once, the probes and health checks beside them until the last client has its answer."""
    done = asyncio.Event()
    probes, healths = [], []

    async def probe_loop():
        i = 0
        while not done.is_set() and i < PROBES:
            probes.append(asyncio.create_task(probe(server.port, client_address(1, i), *probe_request, timeout)))
            i += 1
            await asyncio.sleep(0.2)

    async def health_loop():
        async with httpx.AsyncClient(base_url=server.url, timeout=timeout) as http:
            while not done.is_set():
                start = time.perf_counter()
                queue = (await http.get("/api/health")).json()["queue"]
                healths.append((time.perf_counter() - start, queue))
                await asyncio.sleep(0.2)

    watchers = [asyncio.create_task(probe_loop()), asyncio.create_task(health_loop())]
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(post_photo(server.url, client_address(0, i), photo, timeout) for i in range(n)))
    wall = time.perf_counter() - start
    done.set()
    await asyncio.gather(*watchers)
    return {"outcomes": outcomes, "probes": await asyncio.gather(*probes), "healths": healths, "wall": wall}


def crowd_row(server: Server, rss: PeakRSS, idle_rss: int, n: int, photo: bytes, probe_request, timeout: float,
              small: Path) -> str:
    before = server_clocks(server.http)
    rss.reset()
    result = asyncio.run(crowd(server, n, photo, probe_request, timeout))
    peak = rss.peak
    # The server's own clock: a client's time on these 2 shared cores includes waiting for the load generator, and
    # an upload's arrival is paced by it too; after the upload is what the admission's queue bounds.
    server_s = {kind: {le: count - before[kind].get(le, 0) for le, count in buckets.items()}
                for kind, buckets in server_clocks(server.http).items()}
    wait_until_idle(server.http)
    after = server.post(small)

    outcomes = result["outcomes"]
    by_status = {}
    for o in outcomes:
        by_status[o.status] = by_status.get(o.status, 0) + 1
    admitted = [o.seconds for o in outcomes if o.status == "200"]
    refused = [o for o in outcomes if o.status == "503"]
    errors = {k: v for k, v in by_status.items() if not k.isdigit()}
    others = {k: v for k, v in by_status.items() if k.isdigit() and k not in ("200", "503")}
    probe_refusals = [p.seconds for p in result["probes"] if p.status == "503"]
    health_s = [s for s, _ in result["healths"]]
    deepest = max((q["waiting"] for _, q in result["healths"]), default=0)
    served, refused_s = server_s["answered"], server_s["refused"]
    served_text = (f"{histogram_quantile(0.5, served):.2f} / {histogram_quantile(0.99, served):.2f} "
                   f"({served[10.0]:.0f} of {served[math.inf]:.0f} within 10 s)" if served.get(math.inf) else "-")
    return (f"| {n} | {by_status.get('200', 0)} | {len(refused)} | "
            f"{', '.join(f'{k} {v}' for k, v in others.items()) or 0} | "
            f"{', '.join(f'{k} {v}' for k, v in errors.items()) or 0} | {percentile_text(admitted)} | {served_text} | "
            f"{percentile_text([o.seconds for o in refused], (50, 100))} | "
            f"{percentile_text(probe_refusals, (50, 100), 1000, 0)} ({len(probe_refusals)}) | "
            f"{refused_s.get(0.1, 0):.0f} of {refused_s.get(math.inf, 0):.0f} | "
            f"{'yes' if all(o.retry_after is not None for o in refused) else 'NO'} | "
            f"{(peak - idle_rss) / 2**20:+.0f} ({peak / 2**20:.0f}) | "
            f"{percentile_text(health_s, (50, 100), 1000, 0)} (waiting up to {deepest}) | "
            f"{after.status_code} in {after.elapsed.total_seconds() * 1000:.0f} ms | {result['wall']:.1f} |")


CROWD_HEADER = ("| clients | 200 | 503 | other statuses | connection errors | admitted p50 / p99 s | admitted, "
                "server's clock after the upload arrived: p50 / p99 s (its histogram; probes too) | 503 by httpx "
                "(upload first) p50 / max s | 503 to a probe uploading p50 / max ms (probes) | server's 503s within "
                "100 ms | Retry-After on every 503 | peak RSS - idle MB (peak) | /api/health p50 / max ms | "
                "request after | wall s |\n" + "|---" * 15 + "|")


async def fairness_run(server: Server, photo: bytes, seconds: float, concurrency: int, browsers: int,
                       timeout: float) -> dict:
    stop_at = time.monotonic() + seconds
    script: list[Outcome] = []

    async def script_worker():
        while time.monotonic() < stop_at:
            outcome = await post_photo(server.url, "127.2.0.1", photo, timeout)
            script.append(outcome)
            if outcome.status == "503":
                await asyncio.sleep(outcome.retry_after or 1)

    async def browser(i: int) -> Outcome:
        await asyncio.sleep(i * seconds / browsers)
        return await post_photo(server.url, client_address(3, i), photo, timeout)

    workers = [asyncio.create_task(script_worker()) for _ in range(concurrency)]
    people = await asyncio.gather(*(browser(i) for i in range(browsers)))
    await asyncio.gather(*workers)
    return {"script": script, "browsers": people}


def fairness_row(rule: str, result: dict) -> str:
    def count(outcomes, status):
        return sum(o.status == status for o in outcomes)

    people = result["browsers"]
    answered = [o.seconds for o in people if o.status == "200"]
    return (f"| {rule} | {count(result['script'], '200')} / {count(result['script'], '503')} | "
            f"{count(people, '200')} / {count(people, '503')} of {len(people)} | "
            f"{percentile_text(answered, (50, 100))} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="models/cifar10")
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 200, 1000], help="crowd sizes, one run each")
    parser.add_argument("--client-timeout", type=float, default=120, help="seconds a client waits for its answer")
    parser.add_argument("--slots", type=int, help="the server's --slots (default: its own)")
    parser.add_argument("--queue", type=int, help="the server's --queue (default: its own)")
    parser.add_argument("--fairness", action="store_true", help="also measure the per-client rule")
    parser.add_argument("--fairness-seconds", type=float, default=30)
    parser.add_argument("--script-concurrency", type=int, default=32)
    parser.add_argument("--browsers", type=int, default=20)
    args = parser.parse_args(argv)
    if not all(1 <= n <= MAX_CLIENTS for n in args.clients):
        parser.error(f"--clients: from 1 to {MAX_CLIENTS}")
    server_args = [*(["--slots", str(args.slots)] if args.slots else []),
                   *(["--queue", str(args.queue)] if args.queue is not None else [])]

    with tempfile.TemporaryDirectory(prefix="overload-") as tmp:
        folder = Path(tmp)
        photo_path = write_photo(folder)
        photo = photo_path.read_bytes()
        request = httpx.Request("POST", f"http://{HOST}/api/predict",
                                files={"image": ("photo.jpg", photo, "image/jpeg")})
        body = request.read()
        head = (f"POST /api/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {request.headers['content-type']}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        small = EXAMPLES / "cifar10_cat.png"

        server = Server(args.manifest, folder, server_args)
        try:
            health = server.http.get("/api/health").json()
            assert server.post(photo_path).status_code == 200, "the warm-up request failed"
            rss = PeakRSS(server.process.pid)
            time.sleep(2)
            idle_rss = int(np.median(rss.samples))
            print(f"`{args.manifest}` ({len(health['members'])} member(s), {health['runtime']}), queue capacity "
                  f"{health['queue']['capacity']}; photo {len(photo) / 2**20:.1f} MB; idle RSS "
                  f"{idle_rss / 2**20:.0f} MB; {os.cpu_count()} CPUs, load average "
                  f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
            print(CROWD_HEADER)
            for n in args.clients:
                print(crowd_row(server, rss, idle_rss, n, photo, (head, body), args.client_timeout, small), flush=True)
            rss.stop()
        finally:
            server.stop()
        if "Traceback" in server.log.read_text():
            print(f"\nThe server logged a traceback: see {server.log}")

        if args.fairness:
            print(f"\nOne script at one address ({args.script_concurrency} workers, {args.fairness_seconds:.0f} s) "
                  f"and {args.browsers} browsers arriving one by one:\n")
            print("| per-client rule | script: 200 / 503 | browsers: 200 / 503 | browsers' 200 p50 / max s |\n"
                  "|---|---|---|---|")
            for rule, env in (("on (default)", {}), ("off", {"VISION_ENSEMBLE_WAITING_PER_CLIENT": "100000"})):
                server = Server(args.manifest, folder, server_args, **env)
                try:
                    result = asyncio.run(fairness_run(server, photo, args.fairness_seconds, args.script_concurrency,
                                                      args.browsers, args.client_timeout))
                finally:
                    server.stop()
                print(fairness_row(rule, result), flush=True)


if __name__ == "__main__":
    main()
