"""`POST /predict` against the same model called directly in-process, and batch predict.

Run from the repository root:

    .venv/bin/python benchmarks/predict.py
    .venv/bin/python benchmarks/predict.py --images 48 --seconds 20 --clients 1,2,3,5

What it does (about 3 minutes on a 2-core machine):

1. Lake (not timed): a fresh temporary RADLAKE_HOME with the embedded defaults. Its
   images are real chest X-rays, the first --images JPEGs of
   ../shared/data/cxr_ieee8023_lung_boxes_subset (sizes up to about 2,500 px), or,
   without that folder, generated 2,048 x 2,048 16-bit CR-like PNGs. Both go through
   the normal ingest pipeline; a viewer token is created.
2. Model (not timed): a YOLOv8-style detector assembled with onnx.helper, 640 x 640
   letterboxed input, seven 3 x 3 convolutions (ReLU, stride 2 down to 20 x 20, then
   256 -> 512 -> 256 channels), a 1 x 1 head giving [N, 4 + 2, 400] (sigmoid boxes
   and scores): about 2.8 M weights (11 MB) and 1.4 GMAC per image, so it costs what
   a small real detector costs. Its weights are random (seeded): it finds nothing,
   but it finds it at the real price. Registered as `bench-detector`.
3. Per client count (default 1, 2, 3, 5), each for --seconds after a warm-up:
   - direct: client threads in this process call the model on the stored images, each
     call as the service makes it: load and decode the original from the store
     (StoredImages, the stored grid), letterbox, one ONNX Runtime session shared by
     the threads (radlake.inference.runner.detect), decode and NMS;
   - API: client threads each with a keep-alive httpx.Client send `POST /predict`
     {"image_id", "model"} to uvicorn (`radlake.api.app:create_app`, one process) on
     127.0.0.1: the same work plus HTTP, auth, the catalog reads and the run's record.
   - direct, decode guard: the same as direct, under the API's bound on decodes at
     once (api/decoding.py, DECODE_SLOTS), which keeps a server's memory in bounds;
     it shows how much of any gap is that bound rather than HTTP.
   Images are taken in turn, the same order for each. Prints requests/s, p50 and p95
   latency, and the API/direct throughput ratio per client count (target >= 0.85).
4. Batch: `radlake predict --model bench-detector --select source=bench-cxr` (the CLI
   as a user types it, one process, batches of 8), images/s over the command's time
   and over the predicting alone (the job's own seconds).

The machine's load matters: with 2 CPUs, another job running at the same time takes
throughput from whichever side is being measured. Run it on an idle machine, or
compare the ratio rather than the absolute figures.
Exit status: 0 when every ratio meets the target, 1 when one does not, 2 when
nothing could be measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image as PILImage
from sqlalchemy import select

from api import api_server, percentile  # benchmarks/api.py: uvicorn in a child process
from radlake.api.decoding import DECODE_SLOTS, decode_slot
from radlake.auth import Role, create_token
from radlake.catalog.db import session_factory, transaction
from radlake.catalog.models import Image, Source
from radlake.config import Settings
from radlake.inference.registry import register_version
from radlake.inference.runner import STORED_PIXELS, detect
from radlake.inference.service import served_model
from radlake.lake import Lake, init_lake
from radlake.pipelines.ingest import ingest
from radlake.pipelines.stored_images import StoredImage, StoredImages

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cxr_ieee8023_lung_boxes_subset"
SOURCE = "bench-cxr"
MODEL = "bench-detector"
SIZE = 640
RATIO_TARGET = 0.85
WARM_UP_SECONDS = 2.0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the model ---------------------------------------------------------------------


def detector(seed: int = 0, classes: int = 2) -> bytes:
    """A YOLOv8-layout detector of realistic cost (see the module docstring)."""
    rng = np.random.default_rng(seed)
    layers = [(3, 16, 2), (16, 32, 2), (32, 64, 2), (64, 128, 2), (128, 256, 2)]
    layers += [(256, 512, 1), (512, 256, 1)]
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    current = "images"
    for index, (inputs, outputs, stride) in enumerate(layers):
        # He initialisation keeps activations of the same scale through the stack.
        w = rng.normal(0, np.sqrt(2 / (inputs * 9)), (outputs, inputs, 3, 3)).astype(np.float32)
        weights += [
            numpy_helper.from_array(w, f"w{index}"),
            numpy_helper.from_array(np.zeros(outputs, np.float32), f"b{index}"),
        ]
        nodes += [
            helper.make_node(
                "Conv",
                [current, f"w{index}", f"b{index}"],
                [f"conv{index}"],
                kernel_shape=[3, 3],
                strides=[stride, stride],
                pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"conv{index}"], [f"act{index}"]),
        ]
        current = f"act{index}"
    channels = layers[-1][1]
    head = rng.normal(0, 0.02, (4 + classes, channels, 1, 1)).astype(np.float32)
    head[4:] *= 8  # scores vary between anchors more than boxes do
    # Score logits start low (-4): a few anchors pass a 0.25 threshold, as a trained
    # detector's would, rather than all 400.
    bias = np.array([0, 0, -1, -1] + [-3] * classes, np.float32)
    scale = np.array([SIZE, SIZE, SIZE / 2, SIZE / 2] + [1] * classes, np.float32)
    weights += [
        numpy_helper.from_array(head, "head_w"),
        numpy_helper.from_array(bias, "head_b"),
        numpy_helper.from_array(scale.reshape(1, -1, 1), "head_scale"),
        numpy_helper.from_array(np.array([0, 4 + classes, -1], np.int64), "flat"),
    ]
    nodes += [
        helper.make_node("Conv", [current, "head_w", "head_b"], ["head"], kernel_shape=[1, 1]),
        helper.make_node("Reshape", ["head", "flat"], ["head_flat"]),
        helper.make_node("Sigmoid", ["head_flat"], ["head_sig"]),
        helper.make_node("Mul", ["head_sig", "head_scale"], ["output0"]),
    ]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    anchors = (SIZE // 32) ** 2
    output = helper.make_tensor_value_info(
        "output0", TensorProto.FLOAT, ["N", 4 + classes, anchors]
    )
    graph = helper.make_graph(nodes, "bench_detector", [image], [output], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    for key, value in {
        "names": "{0: 'Left Lung', 1: 'Right Lung'}",
        "imgsz": f"[{SIZE}, {SIZE}]",
        "task": "detect",
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


# -- the lake ----------------------------------------------------------------------


def generated_cr(folder: Path, count: int) -> list[Path]:
    """2,048 x 2,048 16-bit PNGs: a smooth body-like field, ribs of a sort, noise."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:2048, 0:2048] / 2048
    made = []
    for n in range(count):
        rng = np.random.default_rng(n)
        body = np.exp(-(((x - 0.5) / 0.35) ** 2 + ((y - 0.55) / 0.45) ** 2))
        ribs = 0.1 * np.sin(40 * y + 3 * np.sin(6 * x) + n)
        field = 1200 + 2400 * body + 600 * ribs + rng.normal(0, 60, body.shape)
        path = folder / f"cr-{n:03d}.png"
        PILImage.fromarray(np.clip(field, 0, 4095).astype(np.uint16)).save(path)
        made.append(path)
    return made


def chest_xrays(work: Path, count: int) -> tuple[list[Path], str]:
    images = DATA / "data" / "images"
    if images.is_dir():
        found = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        return found[:count], f"real chest X-rays from {DATA.name}"
    return generated_cr(work / "generated", count), "generated 2048 x 2048 16-bit CR-like PNGs"


@dataclass(frozen=True, slots=True)
class Prepared:
    lake: Lake
    token: str
    image_ids: list[int]
    described: str


def prepare(home: Path, count: int) -> Prepared:
    started = time.perf_counter()
    files, described = chest_xrays(home.parent, count)
    lake, _ = init_lake(Settings(home=home, catalog_url=None, store_url=None, secret_key=None))
    summary = ingest(
        files,
        engine=lake.engine,
        store=lake.store,
        pseudonymizer=lake.pseudonymizer,
        source=SOURCE,
    )
    say(f"ingest: {summary.line()}")
    with transaction(lake.engine) as session:
        register_version(session, lake.store, name=MODEL, onnx_bytes_or_path=detector())
        token = create_token(session, name="bench-viewer", role=Role.VIEWER)
        ids = list(
            session.scalars(
                select(Image.id).join(Source).where(Source.name == SOURCE).order_by(Image.id)
            )
        )
        sizes = [
            f"{w}x{h}"
            for w, h in session.execute(
                select(Image.columns, Image.rows).where(Image.id.in_(ids[:3]))
            )
        ]
    say(
        f"lake ready in {time.perf_counter() - started:.1f} s: {len(ids)} images ({described}; "
        f"e.g. {', '.join(sizes)}), model {len(detector()) / 1e6:.1f} MB"
    )
    return Prepared(lake, token, ids, described)


# -- clients -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    mode: str
    clients: int
    latencies: list[float]
    wall: float

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall

    def ms(self, percent: float) -> float:
        return 1000 * percentile(self.latencies, percent)


def run_clients(
    clients: int, seconds: float, setup: Callable[[], Callable[[int], None]]
) -> tuple[list[float], float]:
    """`clients` threads, each calling its own call(n) (made by setup()) until the time
    is up; n runs through 0, 1, 2, ... across all threads."""
    counter = iter(range(10**9))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    stop = [float("inf")]

    def work() -> None:
        try:
            call = setup()
            call(0)  # warm: connection open, session loaded
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            return
        barrier.wait()
        try:
            while time.perf_counter() < stop[0]:
                with lock:
                    number = next(counter)
                started = time.perf_counter()
                call(number)
                latencies.append(time.perf_counter() - started)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed to start
        barrier.wait()
    started = time.perf_counter()
    stop[0] = started + seconds
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"a call failed: {errors[0]}") from errors[0]
    # Each thread finishes its last call after the stop: the wall covers it.
    return latencies, time.perf_counter() - started


def direct_caller(
    lake: Lake, image_ids: Sequence[int], guard: Callable[[], AbstractContextManager[object]] | None
) -> Callable[[], Callable[[int], None]]:
    """What the service does for one image, without HTTP and the catalog (and, with
    guard, under the API's bound on decodes at once)."""
    model = served_model(lake, MODEL)
    loaded = model.load(lake.store)
    with session_factory(lake.engine)() as session:
        rows = {
            row.id: StoredImage.of(row)
            for row in session.execute(
                select(Image.id, Image.sha256, Image.format, Image.original_key).where(
                    Image.id.in_(image_ids)
                )
            )
        }
    images = StoredImages(
        lake.store, max_decoded_bytes=lake.limits.max_decoded_bytes, decode_guard=guard
    )

    def setup() -> Callable[[int], None]:
        def call(number: int) -> None:
            picture = images.render(rows[image_ids[number % len(image_ids)]], STORED_PIXELS)
            detect(loaded, model, [picture.image], batch_size=1)

        return call

    return setup


def api_caller(
    url: str,
    token: str,
    image_ids: Sequence[int],
    clients: list[httpx.Client],
    inside: list[float],
) -> Callable[[], Callable[[int], None]]:
    """POST /predict by image id; inside collects each answer's own latency_ms (decode,
    preprocessing, model, NMS in the server), to tell server work from the rest."""

    def setup() -> Callable[[int], None]:
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        )
        clients.append(client)

        def call(number: int) -> None:
            body = {"image_id": image_ids[number % len(image_ids)], "model": MODEL}
            answer = client.post("/predict", json=body)
            if answer.status_code != 200:
                raise RuntimeError(f"POST /predict answered {answer.status_code}: {answer.text}")
            inside.append(float(answer.json()["latency_ms"]) / 1000)

        return call

    return setup


def measured(
    mode: str, clients: int, seconds: float, setup: Callable[[], Callable[[int], None]]
) -> Result:
    run_clients(clients, min(WARM_UP_SECONDS, seconds), setup)
    latencies, wall = run_clients(clients, seconds, setup)
    result = Result(mode, clients, latencies, wall)
    say(
        f"{mode}, {clients} client(s): {len(latencies)} in {wall:.1f} s, "
        f"{result.per_second:.1f}/s, p95 {result.ms(95):.0f} ms"
    )
    return result


# -- batch -------------------------------------------------------------------------


def batch_predict(home: Path, count: int) -> tuple[float, float]:
    """`radlake predict` over every image: (images/s over the command, over its job)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLAKE_")}
    env["RADLAKE_HOME"] = str(home)
    command = [
        sys.executable,
        "-m",
        "radlake.cli.main",
        "predict",
        "--model",
        MODEL,
        "--select",
        f"source={SOURCE}",
        "--score",
        "0.3",
        "--json",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"radlake predict failed: {done.stderr.strip()[-1000:]}")
    summary = json.loads(done.stdout)
    predicted = int(summary.get("predicted", 0))
    if predicted != count:
        raise RuntimeError(f"radlake predict predicted {predicted} images, expected {count}")
    seconds = float(summary.get("seconds") or wall)
    return count / wall, count / seconds


# -- main --------------------------------------------------------------------------


def table(rows: Sequence[tuple[Result, Result, Result, float]]) -> str:
    lines = [
        "| clients | direct req/s | direct p50 / p95 ms | direct, decode guard req/s "
        "| /predict req/s | /predict p50 / p95 ms | of which inference p50 ms | ratio | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for direct, guarded, api, inside in rows:
        ratio = api.per_second / direct.per_second
        lines.append(
            f"| {direct.clients} | {direct.per_second:.1f} "
            f"| {direct.ms(50):.0f} / {direct.ms(95):.0f} | {guarded.per_second:.1f} "
            f"| {api.per_second:.1f} | {api.ms(50):.0f} / {api.ms(95):.0f} "
            f"| {1000 * inside:.0f} | {ratio:.2f} "
            f"| {'met' if ratio >= RATIO_TARGET else 'MISSED'} (>= {RATIO_TARGET}) |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24, help="images in the lake (24)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (10)")
    parser.add_argument("--clients", default="1,2,3,5", help="client counts (1,2,3,5)")
    parser.add_argument("--keep", type=Path, help="keep the lake in this new folder")
    args = parser.parse_args(argv)
    counts = [int(text) for text in args.clients.split(",") if text.strip()]
    if args.images < 1 or args.seconds <= 0 or not counts or min(counts) < 1:
        parser.error("--images, --seconds and --clients must be positive")
    work = Path(tempfile.mkdtemp(prefix="radlake-predict-bench-"))
    home = args.keep or work / "home"
    prepared = prepare(home, args.images)
    say(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} before measuring")
    rows: list[tuple[Result, Result, Result, float]] = []
    http_clients: list[httpx.Client] = []
    try:
        direct = direct_caller(prepared.lake, prepared.image_ids, None)
        guarded = direct_caller(prepared.lake, prepared.image_ids, decode_slot)
        with api_server(home) as url:
            inside: list[float] = []
            over_http = api_caller(url, prepared.token, prepared.image_ids, http_clients, inside)
            for clients in counts:
                # Back to back, so a change in the machine's load hits both alike.
                first = measured("direct", clients, args.seconds, direct)
                second = measured("direct, decode guard", clients, args.seconds, guarded)
                inside.clear()
                third = measured("POST /predict", clients, args.seconds, over_http)
                rows.append((first, second, third, percentile(inside, 50)))
                for client in http_clients:
                    client.close()
                http_clients.clear()
        per_command, per_job = batch_predict(home, len(prepared.image_ids))
    finally:
        prepared.lake.engine.dispose()
    print(
        f"\n{len(prepared.image_ids)} {prepared.described}; model {MODEL} "
        f"(640 px letterbox, 1.4 GMAC); decode guard {DECODE_SLOTS} slots; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} after measuring\n"
    )
    print(table(rows))
    print(
        f"\nbatch `radlake predict` (batches of 8, one process): {per_command:.1f} images/s "
        f"over the command, {per_job:.1f} images/s predicting"
    )
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    ratios = [api.per_second / direct.per_second for direct, _, api, _ in rows]
    return 0 if all(ratio >= RATIO_TARGET for ratio in ratios) else 1


if __name__ == "__main__":
    sys.exit(main())
