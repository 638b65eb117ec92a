"""End to end: a real fine-tuned MiniLM variant served by Ray Serve over real HTTP on 127.0.0.1.

One Ray (2 CPUs, no dashboard) and one Serve instance are shared by the module; the tests send real
requests, drive the app past its capacity with a bounded loopback client, and sample the replica's RSS.
"""

from __future__ import annotations

import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from reliability_log import record
from serving_support import free_port, serve_until_healthy

from tightfit.progress import LineReporter

pytestmark = pytest.mark.slow

BUDGET = 1024 * 2**20


POOL = {"minilm-rt": 0.80, "bf16": 0.79, "bf16-vocab": 0.78}  # name -> accuracy to rank by


def _pool_variants(finetuned_minilm_dir, root) -> dict[str, str]:
    """The fine-tuned fp32 variant plus two smaller ones (bf16, and bf16 with a pruned vocabulary) for the
    multiplexed pool. None needs torchao, whose import alone would add ~300 MiB to a replica's runtime."""
    from tightfit.compress import apply_chain
    from tightfit.compress.variant import load_variant, save_variant
    from tightfit.data import load_dataset
    from tightfit.spec import VariantSpec

    data = load_dataset("rotten_tomatoes", seed=0)  # the whole train split: its vocabulary covers the test
    dirs = {"minilm-rt": str(finetuned_minilm_dir)}
    for name, chain in (("bf16", "bf16"), ("bf16-vocab", "prune_vocab|bf16")):
        base = load_variant(finetuned_minilm_dir)
        spec = VariantSpec.parse(chain, name=name)
        model, _ = apply_chain(base.model, spec, kind="classifier", tokenizer=base.tokenizer, data=data)
        dirs[name] = str(save_variant(model, base.tokenizer, root / name, spec, base_model="minilm", kind="classifier"))
    return dirs


@pytest.fixture(scope="module")
def served(finetuned_minilm_dir, module_tmp):
    """Plan for the fine-tuned variant (primary) and two smaller variants under a 1 GiB budget (batch capped at
    8 so the load test can pass capacity with few client threads), deployed on a private Ray + Serve; torn
    down after the module. The pool is narrowed to the primary plus the smallest variant, so Serve's model
    count (2) allows pairs that the bytes do not: the byte eviction has work to do."""
    import dataclasses

    import ray
    from ray import serve

    from tightfit.memory.replica import footprint_for_source
    from tightfit.serve.calibrate import with_load_rss
    from tightfit.serve.plan import ServeOptions, plan_serving
    from tightfit.settings import start_local_ray

    dirs = _pool_variants(finetuned_minilm_dir, module_tmp)
    records = [dataclasses.replace(footprint_for_source(d, name=n), accuracy=POOL[n]) for n, d in dirs.items()]
    plan = plan_serving(with_load_rss(records), BUDGET, ServeOptions(max_batch=8, accuracy_tolerance=0.0, pool_size=3))
    sizes = {v.name: v.resident_bytes for v in plan.pool}
    assert plan.primary.name == "minilm-rt" and set(sizes) == set(POOL), plan.rejected
    assert sizes["bf16-vocab"] < sizes["bf16"] < sizes["minilm-rt"]
    plan = dataclasses.replace(plan, pool_bytes=sizes["minilm-rt"] + sizes["bf16-vocab"])
    assert plan.max_models_per_replica == 2
    port = free_port()
    metrics_port = free_port()
    start_local_ray(num_cpus=2, for_serving=True, _metrics_export_port=metrics_port)
    log = io.StringIO()
    try:
        url = serve_until_healthy(plan, port, timeout_s=120, progress=LineReporter(log))
        yield {"url": url, "plan": plan, "dir": finetuned_minilm_dir, "metrics_port": metrics_port, "sizes": sizes,
               "progress": log.getvalue()}
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def known_examples(served):
    """Test-split reviews the variant itself classifies right with confidence (in-process, no Ray)."""
    import torch

    from tightfit import load_variant
    from tightfit.data import load_dataset

    variant = load_variant(served["dir"])
    test = load_dataset("rotten_tomatoes", seed=0).test.head(200)
    cap = served["plan"].primary.max_tokens  # longer texts are refused with a 422 by design
    test = test[[len(variant.tokenizer(t)["input_ids"]) <= cap for t in test["text"]]]
    enc = variant.tokenizer(list(test["text"]), padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        probs = torch.softmax(variant.model(**enc).logits.float(), dim=-1)
    rows = []
    for text, label, p in zip(test["text"], test["label"], probs, strict=True):
        rows.append({"text": text, "label": int(label), "pred": int(p.argmax()), "conf": float(p.max())})
    return rows


def test_progress_follows_the_replicas_starting(served):
    """What `tightfit serve` prints in a log while the app deploys: the start, each replica state change
    (it ends with every planned replica running) and the end with its duration."""
    n = served["plan"].num_replicas
    lines = served["progress"].splitlines()
    assert sum(f"start   start {n} replica(s)" in line for line in lines) == 1, lines
    assert sum(bool(re.search(rf"done    start {n} replica\(s\) \(\d", line)) for line in lines) == 1, lines
    states = [line[9:].strip() for line in lines if line[9:17] == " " * 8]  # milestone lines
    assert states and states[-1].endswith(f"{n} running"), lines


def test_healthz_and_plan(served):
    health = requests.get(f"{served['url']}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["variant"] == "minilm-rt"
    plan = requests.get(f"{served['url']}/v1/plan", timeout=10).json()
    assert plan["budget_bytes"] == BUDGET and plan["primary"]["max_batch_size"] == 8


def test_correct_labels_for_known_examples(served, known_examples):
    confident = [r for r in known_examples if r["pred"] == r["label"] and r["conf"] >= 0.7][:16]
    assert len(confident) >= 6, "the fine-tuned fixture should be confident on some test reviews"
    assert {r["label"] for r in confident} == {0, 1}, "want both positive and negative examples"
    response = requests.post(f"{served['url']}/v1/classify", json={"texts": [r["text"] for r in confident[:8]]}, timeout=60)
    assert response.status_code == 200
    served_ids = [item["label_id"] for item in response.json()["results"]]
    for r in confident[8:]:
        served_ids.append(requests.post(f"{served['url']}/v1/classify", json={"text": r["text"]}, timeout=60).json()["label_id"])
    assert served_ids == [r["label"] for r in confident]
    # the served model agrees with the same variant run in-process on every other example too
    sample = known_examples[:40]
    agree = 0
    for start in range(0, len(sample), 8):
        chunk = sample[start : start + 8]
        got = requests.post(f"{served['url']}/v1/classify", json={"texts": [r["text"] for r in chunk]}, timeout=60)
        agree += sum(item["label_id"] == r["pred"] for item, r in zip(got.json()["results"], chunk, strict=True))
    assert agree >= 0.95 * len(sample)


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"data": b""}, 422, "JSON object"),
        ({"data": b"{not json"}, 400, "not valid JSON"),
        ({"json": {"text": ""}}, 422, "empty"),
        ({"json": {"text": ["a list"]}}, 422, "must be a string"),
        ({"json": {"text": 7}}, 422, "must be a string"),
        ({"json": {"text": "word " * 400}}, 422, "tokens"),
        ({"data": b'{"text": "' + b"x" * 70_000 + b'"}'}, 413, "payload"),
        ({"json": {"text": "fine", "variant": "ghost"}}, 404, "unknown variant"),
        ({"json": {"texts": ["a"] * 9}}, 413, "limit"),
    ],
)
def test_bad_input_gets_the_right_4xx(served, kwargs, status, fragment):
    response = requests.post(f"{served['url']}/v1/classify", timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_generate_route_without_a_language_model(served):
    response = requests.post(f"{served['url']}/v1/generate", json={"text": "Once upon"}, timeout=30)
    assert response.status_code == 404 and "no causal_lm variant" in response.json()["error"]


def test_overload_answers_503_and_memory_stays_inside_the_budget(served, known_examples):
    import psutil

    url = served["url"]
    pid_before = requests.get(f"{url}/healthz", timeout=10).json()["pid"]
    replica = psutil.Process(pid_before)
    samples: list[int] = []
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.is_set():
            samples.append(replica.memory_info().rss)
            time.sleep(0.02)

    texts = [r["text"] for r in known_examples]
    statuses: list[int] = []
    retry_after: list[str | None] = []
    shapes: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        end = time.time() + 8.0
        i = worker
        while time.time() < end:
            r = requests.post(f"{url}/v1/classify", json={"text": texts[i % len(texts)]}, timeout=60)
            with lock:
                statuses.append(r.status_code)
                if r.status_code == 503:
                    retry_after.append(r.headers.get("Retry-After"))
                    shapes.append(r.json())  # Serve's plain-text 503, given the app's shape in the proxy
            if r.status_code == 503:
                time.sleep(0.1)  # back off a little (the header says 1 s) so 48 clients do not spin
            i += 7

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(max_workers=48) as pool:
        list(pool.map(client, range(48)))
    stop.set()
    sampler.join()
    stats: dict[str, Any] = requests.get(f"{url}/v1/stats", timeout=10).json()
    counts = {code: statuses.count(code) for code in set(statuses)}
    assert set(counts) <= {200, 503}, counts
    assert counts.get(200, 0) > 50 and counts.get(503, 0) > 0, counts  # past capacity, still serving
    assert retry_after and all(v is not None and int(v) >= 1 for v in retry_after)
    assert all(shape["status"] == 503 and "backpressure" in shape["error"] for shape in shapes), shapes[:3]
    assert max(samples) <= BUDGET, f"sampled RSS {max(samples)} over the budget {BUDGET}"
    assert stats["peak_rss_bytes"] <= BUDGET  # VmHWM: no spike between samples either
    assert stats["pid"] == pid_before  # no replica restart
    assert max(int(k) for k in stats["batches"]) > 1  # requests were really batched
    # a torch replica serves without pandas and pyarrow (tightfit.serve.process keeps Ray's imports of them out)
    modules = stats["runtime_modules"]
    assert modules["torch"] and not modules["pandas"] and not modules["pyarrow"], modules
    # Serve's throughput-optimized mode, and tightfit's middleware in Serve's proxy (tightfit.serve.proxy)
    assert stats["serve_env"] == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                                  "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "tightfit.serve.proxy:middlewares"}
    from ray import serve

    app = serve.status().applications["tightfit"]
    assert app.status == "RUNNING"
    states = {str(getattr(k, "value", k)): v for k, v in app.deployments["TightfitServer"].replica_states.items()}
    assert states == {"RUNNING": 1}, states


def test_prometheus_metrics_through_ray(served):
    """Ray's metrics agent exports the app's counters and gauges in Prometheus text format."""
    requests.post(f"{served['url']}/v1/classify", json={"text": "a fine film"}, timeout=30)
    deadline = time.time() + 60
    text = ""
    expected = ("tightfit_requests", "tightfit_batch_size", "tightfit_replica_rss_bytes", 'variant="minilm-rt"')
    while time.time() < deadline:
        try:
            text = requests.get(f"http://127.0.0.1:{served['metrics_port']}/metrics", timeout=5).text
        except requests.RequestException:
            text = ""
        if all(key in text for key in expected):  # the agent exports each metric on its own schedule
            break
        time.sleep(2)
    assert "tightfit_requests" in text and "tightfit_batch_size" in text
    assert "tightfit_replica_rss_bytes" in text and 'variant="minilm-rt"' in text


def test_multiplexed_pool_routes_by_model_id_and_evicts_by_bytes(served, known_examples):
    """Serve's ``serve_multiplexed_model_id`` header picks the variant; the pool keeps bytes under its cap."""
    url, sizes, cap = served["url"], served["sizes"], served["plan"].pool_bytes
    confident = [r for r in known_examples if r["pred"] == r["label"] and r["conf"] >= 0.8][:8]
    texts = [r["text"] for r in confident]

    def ask(variant: str | None) -> dict[str, Any]:
        headers = {"serve_multiplexed_model_id": variant} if variant else {}
        response = requests.post(f"{url}/v1/classify", json={"texts": texts}, headers=headers, timeout=120)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["variant"] == (variant or "minilm-rt")
        agree = sum(item["label_id"] == r["label"] for item, r in zip(body["results"], confident, strict=True))
        assert agree >= len(confident) - 1  # the smaller variants keep the fp32 answers on confident examples
        return requests.get(f"{url}/v1/stats", timeout=10).json()

    before = ask(None)["evictions"]  # the primary is loaded
    steps = [
        ("bf16", ["bf16"], 1),  # Serve's count allows two, the bytes do not
        ("bf16-vocab", ["bf16", "bf16-vocab"], 0),  # both small ones fit the bytes
        (None, ["bf16-vocab", "minilm-rt"], 0),  # Serve's count (2) unloads the least recently used first
    ]
    for variant, loaded, byte_evictions in steps:
        stats = ask(variant)
        assert stats["loaded_variants"] == loaded
        assert stats["evictions"] == before + byte_evictions
        assert sum(sizes[n] for n in loaded) <= cap
        before = stats["evictions"]
    assert stats["peak_rss_bytes"] <= BUDGET


def test_a_replica_killed_under_load_is_replaced_and_every_request_answered(served, known_examples):
    """SIGKILL the model replica while 8 clients send requests: Serve starts a new replica, the requests
    that were inside the killed one answer 503 with Retry-After (tightfit's proxy middleware), the others wait for the new
    replica or get the plan's 503 backpressure; no client sees another status or goes without an answer."""
    import os
    import signal

    url = served["url"]
    old_pid = requests.get(f"{url}/healthz", timeout=10).json()["pid"]
    texts = [r["text"] for r in known_examples]
    outcomes: list[int | str] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        i = worker
        while not stop.is_set():
            try:
                r = requests.post(f"{url}/v1/classify", json={"text": texts[i % len(texts)]}, timeout=120)
                status: int | str = r.status_code
                if status == 503:  # the app's error shape: lost-replica answers come from tightfit.serve.proxy
                    errors.append(r.json()["error"])
            except requests.RequestException as exc:  # no answer: a lost request
                status = type(exc).__name__
            with lock:
                outcomes.append(status)
            if status == 503:
                time.sleep(0.2)
            i += 5

    def new_pid() -> int | None:
        try:
            pid = int(requests.get(f"{url}/healthz", timeout=5).json()["pid"])
        except (requests.RequestException, ValueError, KeyError):
            return None
        return pid if pid != old_pid else None

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(client, w) for w in range(8)]
        time.sleep(2.0)
        before_kill = len(outcomes)
        os.kill(old_pid, signal.SIGKILL)
        deadline, replaced = time.time() + 180, None
        while replaced is None and time.time() < deadline:
            time.sleep(1.0)
            replaced = new_pid()
        after = len(outcomes)
        time.sleep(2.0)  # the new replica serves the clients
        stop.set()
        for future in futures:
            future.result()
    counts = {code: outcomes.count(code) for code in set(outcomes)}
    lost = sum(n for code, n in counts.items() if code not in (200, 503))
    from tightfit.serve.proxy import LOST_REPLICA

    record("replica_kill", requests=len(outcomes), lost=lost, statuses={str(k): v for k, v in counts.items()},
           replaced=replaced is not None, lost_replica_503=errors.count(LOST_REPLICA))
    assert replaced is not None, "Serve did not start a new replica"
    assert set(counts) <= {200, 503}, counts  # no 500, no connection error: every request answered
    assert before_kill > 0 and counts.get(200, 0) > before_kill
    assert outcomes[after:].count(200) > 0, "the new replica serves"
