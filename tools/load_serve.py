"""Load test of `hybridcxr serve`: a real uvicorn server, concurrent clients, throughput with batching on and
off, latency and memory growth.

    python tools/load_serve.py [--model RUN] [--out runs/load_serve] [--clients 8] [--requests 200] [--rounds 4]
                               [--kinds dicom,png]
                               [--big 8] [--limit-pixels 64000000] [--max-decodes 2]
                               [--max-batch 8] [--batch-window-ms MS] [--min-speedup 1.5]

Starts `hybridcxr serve` twice in its own processes on 127.0.0.1 (free ports): batching off (``--max-batch 1``:
one analysis at a time, as before batching) and on (``--max-batch`` 8, the server's default window unless
``--batch-window-ms``). The two take turns for ``--rounds`` rounds (the order flipped each round, so a change in
a shared machine's load falls on both), each round ``--clients`` threads x ``--requests / --rounds`` POST
/v1/analyze each (httpx, small phantom DICOMs and PNGs in turn; ``--kinds png``: PNGs only). For each server it reports errors, throughput,
p50/p95 latency, the batches it ran (from /healthz) and its resident memory (VmRSS of its PID) after the first
100 requests and after the last; then the throughput with batching against without, measured in the same
invocation (so the ratio, not the machine's speed, is the result). Fails on any error, when either server's
memory grew more than ``--max-growth`` (10%) between its two readings (the service keeps a bounded LRU of
results, so memory must level off), or when batching is under ``--min-speedup`` (1.5x) the throughput without.

Then, on the batching server, ``--big`` uploads at once (0: skip), each a PNG of ``--limit-pixels`` pixels (the
largest the server decodes: with less than its 64 million, the server gets ``HYBRIDCXR_MAX_PIXELS`` set to it),
and the server's peak resident memory while they run (VmHWM, reset before, and VmRSS sampled every 20 ms) is
compared with the ceiling the service is designed to: the memory before them plus 2 images (the service's
default ``--max-decodes``, its pixel budget in images at the limit) x 8 bytes a pixel (the float32 image, the
decoder's 8- or 16-bit buffer and working copies; measured: about 5.3) x the pixels, plus 256 MiB: 1,233 MiB
above the start for 64 Mpx. Fails when the peak passes it or an upload is not answered 200. ``--max-decodes 8``
(no bound for 8 uploads) passes it: the check tells a bounded server from an unbounded one.

Without ``--model`` a tiny phantom run is built first under ``--out`` (phantom DICOMs, 160 px prepared set,
a YOLOv8n detector trained 1 epoch at 128 px, a small fusion classifier), as the tests' fixtures do, and reused
by later runs. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY_CLASSIFIER = {"epochs": 8, "patience": 8, "backbone_size": 64, "hidden": [32]}
MIB = 1 << 20
DEFAULT_LIMIT = 64_000_000  # the server's pixel limit (hybridcxr.serve.service.DEFAULT_MAX_PIXELS)
CEILING_DECODES = 2  # decoded images the ceiling allows for: the service's default --max-decodes
CEILING_SLACK_MIB = 256


def build_phantom_run(out: Path) -> Path:
    """A tiny classifier run on phantoms under ``out`` (made once, reused); returns the run folder."""
    from hybridcxr.classify.train import classifier_config, train_classifier
    from hybridcxr.data.phantom import make_phantom_dataset
    from hybridcxr.data.prepare import PrepareOptions, prepare
    from hybridcxr.data.sources import load_source
    from hybridcxr.detect.train import detector_config, train_detector

    run = out / "classifier"
    if (run / "model" / "card.json").is_file():
        return run
    print(f"building a tiny phantom run under {out} (once)", flush=True)
    if not (out / "phantom" / "annotations").is_dir():
        make_phantom_dataset(out / "phantom", n=24, seed=5)
    if not (out / "prepared" / "manifest.csv").is_file():
        prepare(load_source("vindr-cxr", out / "phantom"), out / "prepared",
                PrepareOptions(size=160, workers=0, progress=False))
    if not (out / "detector" / "weights" / "best.json").is_file():
        train_detector(out / "prepared", out / "detector",
                       detector_config({"epochs": 1, "imgsz": 128, "batch": 8, "workers": 0}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "randomly initialised" CNN: no pretrained weights offline
        train_classifier(out / "prepared", out / "detector", run, classifier_config(TINY_CLASSIFIER), progress=False)
    return run


def load_images(out: Path, kinds: str = "dicom,png") -> list[tuple[str, bytes, str]]:
    """Small uploads: 8 phantom DICOMs of 176 x 160 px and 8 prepared 160 px PNGs, as (name, bytes, type); only
    the ``kinds`` named (a DICOM upload's answer includes building its Structured Report)."""
    from hybridcxr.data.phantom import make_phantom_dataset

    small = out / "small-dicoms"
    if not any(small.rglob("*.dicom")):
        make_phantom_dataset(small, n=8, seed=11, size=(176, 160))
    dicoms = sorted(small.rglob("*.dicom"))[:8]
    pngs = sorted((out / "prepared" / "images").rglob("*.png"))[:8] if (out / "prepared").is_dir() else []
    wanted = {kind.strip() for kind in kinds.split(",")}
    files = [(p.name, p.read_bytes(), "application/dicom") for p in dicoms] if "dicom" in wanted else []
    files += [(p.name, p.read_bytes(), "image/png") for p in pngs] if "png" in wanted else []
    if not files:
        sys.exit(f"no load images found under {out}")
    return files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc/PID/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_server(run: Path, port: int, log: Path, max_decodes: int = 2,
                 env_extra: dict[str, str] | None = None, options: list[str] | None = None) -> subprocess.Popen:
    """`hybridcxr serve` (with more ``options``) in its own process (its log to ``log``); returns once /healthz
    answers."""
    import httpx

    env = {**os.environ, "YOLO_OFFLINE": "1", "HYBRIDCXR_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           **(env_extra or {})}
    env.pop("HYBRIDCXR_API_KEY", None)
    with log.open("wb") as handle:
        server = subprocess.Popen([sys.executable, "-m", "hybridcxr.cli", "serve", "--model", str(run), "--port",
                                   str(port), "--device", "cpu", "--max-decodes", str(max_decodes),
                                   *(options or [])],
                                  stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(server)
    sys.exit(f"the server did not answer /healthz within 180 s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """SIGINT (uvicorn's graceful stop) to the server's PID, then SIGKILL if it lingers."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def hammer(port: int, pid: int, files: list[tuple[str, bytes, str]], clients: int, requests: int,
           window: int) -> dict:
    """``clients`` threads x ``requests`` analyses; latencies, errors and RSS after the first/last ``window``."""
    import httpx

    total = clients * requests
    latencies: list[float] = []
    errors: list[str] = []
    done = 0
    rss: dict[str, float] = {}
    lock = threading.Lock()

    def client(index: int) -> None:
        nonlocal done
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            for i in range(requests):
                name, data, kind = files[(index * requests + i) % len(files)]
                start = time.perf_counter()
                try:
                    response = http.post("/v1/analyze", files={"file": (name, data, kind)})
                    ok = response.status_code == 200 and len(response.json()["findings"]) > 0
                    problem = None if ok else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as err:
                    problem = f"{type(err).__name__}: {err}"
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)
                    done += 1
                    if done == window:
                        rss["first"] = rss_mib(pid)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    rss["last"] = rss_mib(pid)
    return {"latencies": np.array(latencies), "errors": errors, "rss": rss, "wall": wall, "total": total}


def big_png(pixels: int) -> tuple[bytes, int, int]:
    """A PNG of at most ``pixels`` pixels (square, a smooth 8-bit pattern: small on disk); (bytes, width, height)."""
    import cv2

    side = math.isqrt(pixels)
    ramp = np.arange(side, dtype=np.uint16)
    image = ((ramp[:, None] + ramp[None, :] // 3) % 256).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        sys.exit("could not encode the large PNG")
    return encoded.tobytes(), side, side


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory in MiB (VmHWM, since the last reset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def big_uploads(port: int, pid: int, data: bytes, uploads: int) -> dict:
    """``uploads`` concurrent POSTs of ``data``; statuses, wall time and the server's peak RSS while they ran."""
    import httpx

    try:  # "5": reset the peak resident memory (VmHWM) to the present one
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = rss_mib(pid)
    sampled, done = [before], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            sampled.append(rss_mib(pid))

    statuses: list[str] = []

    def upload() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            try:
                statuses.append(str(http.post("/v1/analyze", files={"file": ("big.png", data, "image/png")})
                                    .status_code))
            except httpx.HTTPError as err:
                statuses.append(type(err).__name__)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=upload) for _ in range(uploads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    peak = max(max(sampled), peak_rss_mib(pid) if reset else 0.0)
    return {"before": before, "peak": peak, "statuses": statuses, "wall": wall, "hwm": reset}


def report_big(args: argparse.Namespace, big: dict, width: int, height: int, size: int) -> bool:
    """Print the large-upload run against its ceiling; True when it passed."""
    ceiling = big["before"] + CEILING_DECODES * args.bytes_per_pixel * width * height / MIB + CEILING_SLACK_MIB
    ok = big["peak"] <= ceiling and all(status == "200" for status in big["statuses"])
    answered = ", ".join(f"{big['statuses'].count(s)} x {s}" for s in sorted(set(big["statuses"])))
    print(f"large uploads: {args.big} at once, each a {width} x {height} PNG ({width * height / 1e6:.1f} Mpx, "
          f"{size / MIB:.2f} MiB on the wire), server --max-decodes {args.max_decodes}: {answered} in "
          f"{big['wall']:.1f} s")
    print(f"server peak RSS: {big['peak']:.0f} MiB (from {big['before']:.0f} MiB before them; "
          f"{'VmHWM and ' if big['hwm'] else ''}20 ms samples), ceiling {ceiling:.0f} MiB = before + "
          f"{CEILING_DECODES} images x {args.bytes_per_pixel:g} B/px + {CEILING_SLACK_MIB} MiB: "
          f"{'within' if big['peak'] <= ceiling else 'ABOVE'}")
    return ok


def start_mode(args: argparse.Namespace, run: Path, options: list[str]) -> dict:
    """A server with ``options`` (batching on or off); what the rounds add to is kept in the returned dict."""
    env = {"HYBRIDCXR_MAX_PIXELS": str(args.limit_pixels)} if args.limit_pixels < DEFAULT_LIMIT else {}
    port = free_port()
    name = "server-" + "-".join(o.lstrip("-") for o in options) + ".log"
    server = start_server(run, port, args.out / name, args.max_decodes, env, options)
    return {"server": server, "port": port, "pid": server.pid, "options": options, "latencies": [], "errors": [],
            "wall": 0.0, "total": 0, "rss": {}, "big": None}


def run_modes(args: argparse.Namespace, modes: list[dict], files: list, big_data: bytes) -> None:
    """``--rounds`` rounds, each ``--requests / --rounds`` per client against every server in turn (the order
    flipped each round, so a change in the machine's load falls on both); then the batches each ran, the
    large uploads on the last server, and every server stopped."""
    import httpx

    per_round = max(1, args.requests // args.rounds)
    for index in range(args.rounds):
        for mode in modes if index % 2 == 0 else modes[::-1]:
            window = args.window if index == 0 else 0
            part = hammer(mode["port"], mode["pid"], files, args.clients, per_round, window)
            mode["latencies"].append(part["latencies"])
            mode["errors"] += part["errors"]
            mode["wall"] += part["wall"]
            mode["total"] += part["total"]
            mode["rss"].setdefault("first", part["rss"].get("first", part["rss"]["last"]))
            mode["rss"]["last"] = part["rss"]["last"]
    for mode in modes:
        mode["latencies"] = np.concatenate(mode["latencies"])
        mode["batching"] = httpx.get(f"http://127.0.0.1:{mode['port']}/healthz", timeout=30).json()["batching"]
    if big_data:
        modes[-1]["big"] = big_uploads(modes[-1]["port"], modes[-1]["pid"], big_data, args.big)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="classifier run folder [a tiny phantom run]")
    parser.add_argument("--out", type=Path, default=Path("runs/load_serve"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per client and server")
    parser.add_argument("--rounds", type=int, default=4, help="turns the servers take (the requests split evenly)")
    parser.add_argument("--window", type=int, default=100, help="requests before the first memory reading")
    parser.add_argument("--max-growth", type=float, default=0.10)
    parser.add_argument("--big", type=int, default=8, help="concurrent uploads at the pixel limit (0: none)")
    parser.add_argument("--limit-pixels", type=int, default=DEFAULT_LIMIT, help="the server's pixel limit")
    parser.add_argument("--max-decodes", type=int, default=2, help="the server's --max-decodes")
    parser.add_argument("--bytes-per-pixel", type=float, default=8, help="memory one decoded image may take")
    parser.add_argument("--max-batch", type=int, default=8, help="the batching server's --max-batch")
    parser.add_argument("--batch-window-ms", type=float, default=None, help="its --batch-window-ms [the server's]")
    parser.add_argument("--kinds", default="dicom,png", help="small uploads sent: dicom, png or both")
    parser.add_argument("--min-speedup", type=float, default=1.5, help="batching's throughput over none, at least")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.model or build_phantom_run(args.out)
    files = load_images(args.out, args.kinds)
    big_data, width, height = big_png(args.limit_pixels) if args.big else (b"", 0, 0)
    window = [] if args.batch_window_ms is None else ["--batch-window-ms", f"{args.batch_window_ms:g}"]
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    off = start_mode(args, run, ["--max-batch", "1"])
    try:
        on = start_mode(args, run, ["--max-batch", str(args.max_batch), *window])
        try:
            run_modes(args, [off, on], files, big_data)
        finally:
            stop(on["server"])
    finally:
        stop(off["server"])
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    failed = not report_small(args, run, files, off, "batching off")
    failed = not report_small(args, run, files, on, "batching on") or failed
    failed = not report_speedup(args, off, on) or failed
    if on["big"] is not None:
        failed = not report_big(args, on["big"], width, height, len(big_data)) or failed
    print("RESULT " + ("FAIL" if failed else "PASS"))
    return 1 if failed else 0


def report_small(args: argparse.Namespace, run: Path, files: list, result: dict, label: str) -> bool:
    """Print one server's many-small-requests run; True when it had no error and memory levelled off."""
    lat = result["latencies"] * 1000
    first, last = result["rss"]["first"], result["rss"]["last"]
    growth = (last - first) / first
    cores = len(os.sched_getaffinity(0))
    batching = result["batching"]
    print(f"[{label}] server: hybridcxr serve --model {run} {' '.join(result['options'])} on "
          f"127.0.0.1:{result['port']} (pid {result['pid']}), cores: {cores}")
    print(f"[{label}] uploads: {len(files)} small files in turn ({', '.join(sorted({f[2] for f in files}))})")
    print(f"[{label}] requests: {result['total']} ({args.clients} clients x {result['total'] // args.clients}, "
          f"{args.rounds} rounds) in {result['wall']:.1f} s, {result['total'] / result['wall']:.1f} requests/s")
    print(f"[{label}] batches: {batching['batches']} for {batching['images']} images, mean "
          f"{batching['images'] / max(1, batching['batches']):.2f}, largest {batching['largest']} "
          f"(max {batching['max_batch']}, window {batching['window_ms']:g} ms)")
    print(f"[{label}] errors: {len(result['errors'])}" + (f" (first: {result['errors'][0]})" if result["errors"] else ""))
    print(f"[{label}] latency: p50 {np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms, "
          f"max {lat.max():.0f} ms")
    print(f"[{label}] server RSS: {first:.1f} MiB after the first {args.window} requests, {last:.1f} MiB after "
          f"the last: growth {100 * growth:+.1f}% (limit {100 * args.max_growth:.0f}%)")
    return not result["errors"] and growth <= args.max_growth


def report_speedup(args: argparse.Namespace, off: dict, on: dict) -> bool:
    """Print batching's throughput against none (same invocation, same clients); True when at least the target."""
    rate_off, rate_on = off["total"] / off["wall"], on["total"] / on["wall"]
    ratio = rate_on / rate_off
    p50_off, p50_on = np.percentile(off["latencies"], 50) * 1000, np.percentile(on["latencies"], 50) * 1000
    print(f"throughput: batching on {rate_on:.1f} requests/s, off {rate_off:.1f} requests/s: {ratio:.2f}x "
          f"(target {args.min_speedup:g}x: {'reached' if ratio >= args.min_speedup else 'NOT reached'}); "
          f"p50 latency {p50_on:.0f} ms against {p50_off:.0f} ms")
    return ratio >= args.min_speedup


if __name__ == "__main__":
    sys.exit(main())
