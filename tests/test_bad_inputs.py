"""Bad input, one table: every case ends in its exit status (or HTTP status) and one clear line naming the
problem, never a Python traceback and never a silent success.

- CLI, config files, datasets, model dirs, variant dirs: run in-process through the real entry point
  (``tightfit.cli.main``, as the console script runs it), stderr captured; nothing may start Ray.
- The console script in a fresh process (quiet by default, ``--verbose`` shows library notices).
- HTTP: a real Ray Serve app (a tiny BERT) on 127.0.0.1: malformed bodies, oversized ones (a 200 MB
  upload is refused from its headers with the model replica's memory unchanged), a chunked one.
- Helm values: the chart's schema and template guards through the real Helm engine.
``benchmarks/reliability.py`` runs this module and counts the cases.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from reliability_log import record

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- bad files


def _truncate(path: Path, fraction: float = 0.5) -> None:
    with path.open("r+b") as handle:
        handle.truncate(int(path.stat().st_size * fraction))


def _copy(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink(missing_ok=True)
    return dst


def _csv(path: Path, texts: list[str], labels: list[Any]) -> Path:
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def _yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    """Every bad file the table refers to, built once (datasets, model dirs, variant dirs, config files)."""
    from tightfit.compress import build_variant
    from tightfit.spec import VariantSpec

    root = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {"root": root, "tiny": tiny_bert_dir}
    ok = [f"a review number {i}" for i in range(40)]
    f["good_csv"] = _csv(root / "good.csv", ok, ["pos", "neg"] * 20)
    f["three"] = _csv(root / "three.csv", ["good", "bad", "fine"], ["pos", "neg", "pos"])
    f["blank"] = _csv(root / "blank.csv", [" ", "\t", "   "] * 20, ["pos", "neg", "pos"] * 20)
    f["one_label"] = _csv(root / "one_label.csv", ok, ["pos"] * 40)
    f["rare"] = _csv(root / "rare.csv", [*ok, "odd one"], ["pos", "neg"] * 20 + ["rare"])
    f["nocols"] = root / "nocols.csv"
    pd.DataFrame({"review": ok, "score": [1] * 40}).to_csv(f["nocols"], index=False)
    f["nonutf"] = root / "nonutf.csv"
    f["nonutf"].write_bytes(b"text,label\n" + b"caf\xe9 au lait,pos\nplain,neg\n" * 20)
    f["random_csv"] = root / "random.csv"
    f["random_csv"].write_bytes(bytes(range(256)) * 4)
    f["bad_jsonl"] = root / "bad.jsonl"
    f["bad_jsonl"].write_text('{"text": "fine", "label": 1}\nthis is not json\n')
    f["empty_token"] = root / "token"
    f["empty_token"].write_text("\n")

    f["truncated_dir"] = _copy(tiny_bert_dir, root / "truncated-model")
    _truncate(f["truncated_dir"] / "model.safetensors")
    f["truncated_file"] = f["truncated_dir"] / "model.safetensors"
    f["no_config"] = _copy(tiny_bert_dir, root / "no-config", drop=("config.json",))
    f["bad_config"] = _copy(tiny_bert_dir, root / "bad-config")
    (f["bad_config"] / "config.json").write_text("{not json")
    f["no_weights"] = _copy(tiny_bert_dir, root / "no-weights", drop=("model.safetensors",))
    f["no_tokenizer"] = _copy(tiny_bert_dir, root / "no-tokenizer", drop=("tokenizer.json", "vocab.txt"))

    f["variant"] = build_variant(tiny_bert_dir, VariantSpec.parse("fp32", name="tiny"), root / "variant", progress=False)
    f["variant_truncated"] = _copy(f["variant"], root / "v-truncated")
    _truncate(f["variant_truncated"] / "model.safetensors", 0.3)
    f["variant_flipped"] = _copy(f["variant"], root / "v-flipped")
    weights = f["variant_flipped"] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    f["variant_bad_manifest"] = _copy(f["variant"], root / "v-bad-manifest")
    (f["variant_bad_manifest"] / "manifest.json").write_text("{")
    f["variant_missing"] = _copy(f["variant"], root / "v-missing", drop=("config.json",))
    f["not_variant"] = root / "not-variant"
    f["not_variant"].mkdir()
    (f["not_variant"] / "notes.txt").write_text("my notes")

    variants = "variants:\n  - {variant: fp32, chain: fp32}\n"
    f["cfg_random"] = root / "random.yaml"
    f["cfg_random"].write_bytes(bytes(range(128, 256)) * 3)
    f["cfg_list"] = _yaml(root / "list.yaml", "- model\n- dataset\n")
    f["cfg_syntax"] = _yaml(root / "syntax.yaml", "model: minilm\n  dataset: [oops\n")
    f["cfg_mem512"] = _yaml(root / "mem512.yaml", variants + "target: {memory: 512}\n")
    f["cfg_milli"] = _yaml(root / "milli.yaml", variants + "target: {memory: 10m}\n")
    f["cfg_negative"] = _yaml(root / "negative.yaml", variants + "target: {memory: -1GiB}\n")
    f["cfg_huge"] = _yaml(root / "huge.yaml", variants + "target: {memory: 1e400GiB}\n")
    f["cfg_accuracy"] = _yaml(root / "accuracy.yaml", variants + "target: {min_accuracy: 80}\n")
    f["cfg_nan"] = _yaml(root / "nan.yaml", variants + "finetune: {lr: .nan}\n")
    f["cfg_unknown_key"] = _yaml(root / "unknown.yaml", variants + "modle: minilm\n")
    f["cfg_empty_chain"] = _yaml(root / "empty-chain.yaml", "variants:\n  - {variant: a, chain: ''}\n")
    f["cfg_bad_method"] = _yaml(root / "bad-method.yaml", "variants:\n  - {variant: a, chain: int3}\n")
    f["cfg_twice"] = _yaml(root / "twice.yaml", "variants:\n  - {variant: a, chain: fp32}\n  - {variant: a, chain: bf16}\n")
    f["cfg_fractions"] = _yaml(root / "fractions.yaml", variants + "data: {validation: 0.5, test: 0.6}\n")
    f["cfg_three"] = _yaml(root / "three.yaml", variants + f"dataset: {f['three']}\n")
    f["cfg_model"] = _yaml(root / "model.yaml", variants + f"model: {f['truncated_dir']}\n")
    f["cfg_profile"] = _yaml(root / "profile.yaml", variants)
    f["cfg_workers"] = _yaml(root / "workers.yaml", variants + "finetune: {workers: 0}\n")
    return f


# ----------------------------------------------------------------------------------------- CLI table


@dataclass(frozen=True)
class Case:
    """One bad input: the command (``{name}`` is a file of the ``bad`` fixture), its exit status and words
    its one error line must hold (all of them, case-insensitive)."""

    id: str
    args: tuple[str, ...]
    code: int
    words: tuple[str, ...]


def case(id: str, args: str, code: int, *words: str) -> Case:
    return Case(id, tuple(args.split("\x1f") if "\x1f" in args else args.split()), code, words)


SPEC = "compress --model {tiny} --out {root}/out --spec"
FT = "finetune --model {tiny} --workers 1"
SERVE = "serve --variant {tiny} --no-measure --dry-run"
CLI_CASES = [
    # compress: specs
    case("spec-empty", "compress\x1f--model\x1f{tiny}\x1f--out\x1f{root}/out\x1f--spec\x1f", 2, "spec is empty", "fp32"),
    case("spec-unknown-method", f"{SPEC} nosuch", 2, "unknown compression method", "known methods"),
    case("spec-wrong-order", f"{SPEC} int8_dynamic|prune_unstructured", 2, "cannot come after", "order steps"),
    case("spec-out-of-range", f"{SPEC} prune_unstructured:sparsity=1.5", 2, "sparsity must be in (0, 1)"),
    case("spec-unknown-parameter", f"{SPEC} prune_unstructured:foo=1", 2, "no parameter", "sparsity"),
    case("spec-malformed-step", f"{SPEC} prune_unstructured:sparsity", 2, "must look like key=value"),
    case("spec-gpu-only", f"{SPEC} fp16", 2, "needs a gpu"),
    case("spec-two-casts", f"{SPEC} bf16|bf16", 2, "pick one cast"),
    # compress: model paths and outputs
    case("model-truncated-file", "compress --model {truncated_file} --spec bf16 --out {root}/o", 2, "truncated", "bytes"),
    case("model-truncated-dir", "compress --model {truncated_dir} --spec bf16 --out {root}/o", 2, "truncated"),
    case("model-no-config", "compress --model {no_config} --spec bf16 --out {root}/o", 2, "no config.json"),
    case("model-bad-config", "compress --model {bad_config} --spec bf16 --out {root}/o", 2, "not valid json"),
    case("model-no-weights", "compress --model {no_weights} --spec bf16 --out {root}/o", 2, "holds no weights"),
    case("model-no-tokenizer", "compress --model {no_tokenizer} --spec bf16 --out {root}/o", 2, "no tokenizer files"),
    case("model-missing", "compress --model {root}/nowhere --spec bf16 --out {root}/o", 2, "neither a built-in"),
    case("out-not-a-variant", "compress --model {tiny} --spec bf16 --out {not_variant}", 2, "not a variant directory"),
    case("distill-three-rows", "compress --model {tiny} --spec distill --dataset {three} --out {root}/o", 2,
         "train split has 3 row"),
    case("dataset-not-utf8", "compress --model {tiny} --spec distill --dataset {nonutf} --out {root}/o", 2,
         "not utf-8", "re-save"),
    # finetune: datasets (refused before Ray starts), numbers, flags
    case("dataset-three-rows", f"{FT} --dataset {{three}}", 2, "train split has 3 row", "usable rows"),
    case("dataset-blank-texts", f"{FT} --dataset {{blank}}", 2, "no usable rows", "60 empty or whitespace"),
    case("dataset-one-label", f"{FT} --dataset {{one_label}}", 2, "fewer than two label values", "'pos'"),
    case("dataset-rare-label", f"{FT} --dataset {{rare}}", 2, "label(s) ['rare']"),
    case("dataset-no-columns", f"{FT} --dataset {{nocols}}", 2, "lacks column(s) ['text', 'label']", "review"),
    case("dataset-random-bytes", f"{FT} --dataset {{random_csv}}", 2, "not valid csv"),
    case("dataset-bad-jsonl", f"{FT} --dataset {{bad_jsonl}}", 2, "not valid json lines"),
    case("dataset-unknown-name", f"{FT} --dataset imdb", 2, "unknown dataset 'imdb'", "rotten_tomatoes"),
    case("finetune-budget-no-unit", f"{FT} --memory-budget 512", 2, "512", "no unit"),
    case("finetune-budget-milli", f"{FT} --memory-budget 10m", 2, "milli"),
    case("finetune-epochs-zero", f"{FT} --epochs 0", 2, "epochs", "greater than 0"),
    case("finetune-workers-absurd", "finetune --workers 100000", 2, "workers", "less than or equal to 4096"),
    case("finetune-lr-absurd", f"{FT} --lr 5", 2, "lr", "less than 1"),
    case("finetune-seed-negative", f"{FT} --seed -1", 2, "seed", "greater than or equal to 0"),
    case("finetune-max-length", f"{FT} --max-length 4", 2, "max_length", "greater than or equal to 8"),
    case("finetune-fsdp-on-cpu", f"{FT} --strategy fsdp", 2, "fsdp needs gpu workers"),
    case("finetune-precision", f"{FT} --precision fp8", 2, "precision"),
    case("finetune-model-truncated", "finetune --model {truncated_file} --workers 1", 2, "truncated"),
    case("finetune-two-targets", f"{FT} --address http://127.0.0.1:9 --kuberay-namespace ml", 2, "either --address"),
    case("finetune-empty-token-file", f"{FT} --address http://127.0.0.1:9 --ray-token-file {{empty_token}}", 2,
         "must hold one token"),
    case("finetune-missing-token-file", f"{FT} --address http://127.0.0.1:9 --ray-token-file {{root}}/none", 2,
         "cannot read the ray token file"),
    case("finetune-epochs-not-a-number", f"{FT} --epochs many", 2, "invalid value"),
    # serve: budgets, numbers, variants
    case("budget-no-unit", f"{SERVE} --memory-budget 512", 2, "'512' has no unit"),
    case("budget-milli", f"{SERVE} --memory-budget 10m", 2, "'m' means milli", "10Mi"),
    case("budget-negative", f"{SERVE} --memory-budget -1GiB", 2, "must not be negative"),
    case("budget-huge", f"{SERVE} --memory-budget 1e400GiB", 2, "larger than any machine"),
    case("budget-too-small", f"{SERVE} --memory-budget 1MiB", 2, "no variant fits", "raise --memory-budget"),
    case("latency-not-a-duration", f"{SERVE} --memory-budget 1GiB --latency-slo fast", 2, "cannot read 'fast'"),
    case("max-tokens-absurd", f"{SERVE} --memory-budget 1GiB --max-tokens 100000000", 2, "max_tokens must be in"),
    case("max-tokens-over-positions", f"{SERVE} --memory-budget 1GiB --max-tokens 1024", 2,
         "over the 512 positions the model reads"),
    case("port-out-of-range", f"{SERVE} --memory-budget 1GiB --port 70000", 2, "invalid value", "65535"),
    case("serve-variant-truncated", "serve --variant {variant_truncated} --no-measure --dry-run --memory-budget 1GiB",
         2, "truncated"),
    case("serve-two-sources", f"{SERVE} --memory-budget 1GiB --footprints x.json --from-mlflow e", 2, "either"),
    # profile: variant dirs
    case("variant-not-a-variant", "profile {not_variant} --dataset=", 2, "not a variant directory"),
    case("variant-truncated", "profile {variant_truncated} --dataset=", 2, "truncated or altered"),
    case("variant-flipped-byte", "profile {variant_flipped} --dataset=", 2, "checksum mismatch"),
    case("variant-bad-manifest", "profile {variant_bad_manifest} --dataset=", 2, "corrupt"),
    case("variant-missing-file", "profile {variant_missing} --dataset=", 2, "config.json is missing"),
    case("profile-seq-len", "profile {variant} --dataset= --seq-len 4", 2, "at least 8"),
    case("profile-baseline-missing", "profile {variant} --dataset= --baseline {root}/none.json", 2,
         "not a footprint json"),
    # compare: limits
    case("compare-budget-no-unit", "compare --budget 512", 2, "has no unit"),
    case("compare-accuracy-percent", "compare --min-accuracy 80", 2, "did you mean 0.8"),
    case("compare-latency", "compare --latency soon", 2, "cannot read 'soon'"),
    # pipeline config files
    case("config-missing", "run --config {root}/none.yaml", 2, "does not exist"),
    case("config-random-bytes", "run --config {cfg_random}", 2, "not a text file", "not utf-8"),
    case("config-not-a-mapping", "run --config {cfg_list}", 2, "top level must be a mapping"),
    case("config-bad-yaml", "run --config {cfg_syntax}", 2, "not valid yaml at line"),
    case("config-memory-no-unit", "run --config {cfg_mem512}", 2, "target", "512 has no unit"),
    case("config-memory-milli", "run --config {cfg_milli}", 2, "milli"),
    case("config-memory-negative", "run --config {cfg_negative}", 2, "must not be negative"),
    case("config-memory-huge", "run --config {cfg_huge}", 2, "larger than any machine"),
    case("config-accuracy-percent", "run --config {cfg_accuracy}", 2, "did you mean 0.8"),
    case("config-nan", "run --config {cfg_nan}", 2, "finetune.lr", "finite"),
    case("config-unknown-key", "run --config {cfg_unknown_key}", 2, "modle", "unknown key"),
    case("config-empty-chain", "run --config {cfg_empty_chain}", 2, "spec is empty"),
    case("config-unknown-method", "run --config {cfg_bad_method}", 2, "unknown compression method 'int3'"),
    case("config-name-twice", "run --config {cfg_twice}", 2, "used twice"),
    case("config-fractions", "run --config {cfg_fractions}", 2, "summing below 1"),
    case("config-three-rows", "run --config {cfg_three}", 2, "train split has 3 row"),
    case("config-model-truncated", "run --config {cfg_model}", 2, "model:", "truncated"),
    case("config-unknown-profile", "run --config {cfg_profile} --quick", 2, "unknown profile 'quick'"),
    case("config-workers-zero", "run --config {cfg_workers}", 2, "finetune.workers", "greater than 0"),
    # compile / submit
    case("compile-unknown-pipeline", "compile nosuch -o {root}/p.yaml", 2, "unknown pipeline 'nosuch'"),
    case("submit-bad-parameter", "submit {root}/none.yaml --host http://127.0.0.1:9 -p epochs", 2, "key=value"),
    case("submit-missing-package", "submit {root}/none.yaml --host http://127.0.0.1:9", 2, "does not exist"),
]


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The console script's entry point in this process: (exit status, stdout, stderr)."""
    import logging

    from tightfit import cli

    logger = logging.getLogger("tightfit")  # the CLI adds its warning handler: undone after the test
    for attribute in ("handlers", "propagate", "level"):
        value = getattr(logger, attribute)
        monkeypatch.setattr(logger, attribute, list(value) if attribute == "handlers" else value)
    monkeypatch.setattr(sys, "argv", ["tightfit", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    """What the command said besides tightfit's own ``warning:`` lines."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]


@pytest.mark.parametrize("item", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input_is_one_clear_line(item: Case, bad, monkeypatch, capsys) -> None:
    args = [a.format(**bad) for a in item.args]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert "Traceback" not in err + out
    assert code == item.code, (code, out, err)
    said = "\n".join(error_lines(err)).lower()
    for word in item.words:
        assert word.lower() in said, (word, err)
    if code == 2 and said.startswith("error:"):
        assert len(error_lines(err)) == 1, err  # one line, not wrapped
    if "ray" in sys.modules:
        import ray

        assert not ray.is_initialized(), "a refused input must not start Ray"


def test_dropped_rows_are_counted_in_one_warning_line(bad, tmp_path, monkeypatch, capsys) -> None:
    """Empty texts are never dropped silently: one warning line with the counts, then the command goes on."""
    rows = [f"a review number {i}" for i in range(30)] + [" ", ""] * 15
    path = _csv(tmp_path / "some-blank.csv", rows, ["pos", "neg"] * 30)
    code, _out, err = run_cli(["compress", "--model", str(bad["tiny"]), "--spec", "prune_structured:heads=0.5",
                              "--dataset", str(path), "--out", str(tmp_path / "v")], monkeypatch, capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "dropped 30 empty or whitespace-only text(s)" in warnings[0], err
    assert "of 60 rows; 30 rows left" in warnings[0]


def test_the_console_script_is_quiet_and_verbose_shows_library_notices(bad, tmp_path) -> None:
    """A command that imports torch, torchao and transformers prints only its own line; ``--verbose`` shows
    the library notices it hid (run as a user runs it: the console script in fresh processes)."""
    script = str(Path(sys.executable).with_name("tightfit"))
    args = ["compress", "--model", str(bad["tiny"]), "--spec", "bf16", "--out", str(bad["not_variant"])]
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "TIGHTFIT_VERBOSE")}
    procs = [subprocess.Popen([script, *extra, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=tmp_path) for extra in ([], ["--verbose"])]
    (_out, err), (_, verbose_err) = (p.communicate(timeout=180) for p in procs)
    assert procs[0].returncode == 2 and procs[1].returncode == 2
    assert err.strip().splitlines() == [f"error: {bad['not_variant']} exists and is not a variant directory; "
                                        "choose an empty or new --out"], err
    assert "Traceback" not in verbose_err and "not a variant directory" in verbose_err
    assert "torchao" in verbose_err or "_pytree" in verbose_err, "--verbose shows the library notices"


# ----------------------------------------------------------------------------------------- HTTP


@pytest.fixture(scope="module")
def tiny_served(tiny_bert_dir):
    """The tiny BERT served by the real app on a private local Ray (every service on 127.0.0.1)."""
    import ray
    from ray import serve
    from serving_support import free_port, serve_until_healthy

    from tightfit.memory.replica import footprint_for_source
    from tightfit.serve.plan import ServeOptions, plan_serving
    from tightfit.settings import start_local_ray

    plan = plan_serving([footprint_for_source(str(tiny_bert_dir), name="tiny")], 1 * 2**30,
                        ServeOptions(max_batch=4, max_tokens=32))
    start_local_ray(num_cpus=2, for_serving=True)
    try:
        url = serve_until_healthy(plan, free_port(), timeout_s=120)
        yield {"url": url, "plan": plan}
    finally:
        serve.shutdown()
        ray.shutdown()


def _big_text(n: int) -> bytes:
    return b'{"text": "' + b"x" * n + b'"}'


HTTP_CASES = [  # (id, request keyword arguments, HTTP status, words of the error)
    ("empty-body", {"data": b""}, 422, "json object"),
    ("not-json", {"data": b"{not json"}, 400, "not valid json"),
    ("not-utf8", {"data": b'{"text": "\xff\xfe"}'}, 400, "not valid json"),
    ("json-array", {"json": ["a", "b"]}, 422, "json object"),
    ("unknown-field", {"json": {"text": "fine", "lang": "en"}}, 422, "unknown field"),
    ("missing-text", {"json": {"variant": "tiny"}}, 422, "missing field 'text'"),
    ("empty-text", {"json": {"text": ""}}, 422, "empty"),
    ("whitespace-text", {"json": {"text": "  \n "}}, 422, "empty"),
    ("text-not-string", {"json": {"text": 7}}, 422, "must be a string"),
    ("texts-not-list", {"json": {"texts": "a"}}, 422, "non-empty list"),
    ("texts-empty", {"json": {"texts": []}}, 422, "non-empty list"),
    ("text-and-texts", {"json": {"text": "a", "texts": ["b"]}}, 422, "either 'text' or 'texts'"),
    ("too-many-texts", {"json": {"texts": ["a"] * 5}}, 413, "limit is 4"),
    ("too-many-tokens", {"json": {"text": "word " * 60}}, 422, "tokens"),
    ("unknown-variant", {"json": {"text": "fine", "variant": "ghost"}}, 404, "unknown variant"),
    ("variant-not-string", {"json": {"text": "fine", "variant": 3}}, 422, "'variant' must be a string"),
    ("header-variant-unknown", {"json": {"text": "fine"}, "headers": {"serve_multiplexed_model_id": "ghost"}}, 404,
     "unknown variant"),
    ("body-over-limit", {"data": _big_text(200_000)}, 413, "limit"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs", "status", "words"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_http_bad_input_gets_its_status_and_message(tiny_served, name, kwargs, status, words) -> None:
    import requests

    response = requests.post(f"{tiny_served['url']}/v1/classify", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    assert words in response.json()["error"].lower()


@pytest.mark.slow
def test_http_wrong_route_and_method(tiny_served) -> None:
    import requests

    url = tiny_served["url"]
    generate = requests.post(f"{url}/v1/generate", json={"text": "Once"}, timeout=30)
    assert generate.status_code == 404 and "no causal_lm variant" in generate.json()["error"]
    assert requests.get(f"{url}/v1/classify", timeout=30).status_code == 405
    assert requests.post(f"{url}/v1/nowhere", json={"text": "x"}, timeout=30).status_code == 404


def _status_of_upload(port: int, head: bytes, chunks: Any = (), limit_bytes: int = 0) -> tuple[int, int]:
    """Send ``head``, then body chunks until the server answers or ``limit_bytes`` went out; returns the HTTP
    status and the body bytes sent. The server may close while we send: that is its answer."""
    import select

    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        for chunk in chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable or sent >= limit_bytes:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        reply = b""
        while b"\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    return int(reply.split(b" ", 2)[1]), sent


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{key} not in /proc/{pid}/status")


@pytest.mark.slow
def test_a_200_mb_upload_is_refused_without_growing_the_replica(tiny_served) -> None:
    """``Content-Length: 200000000`` and not one body byte: the answer (413) comes from the headers alone.
    A chunked upload (no length) is cut at the plan's limit while it streams. The model replica's peak RSS
    (VmHWM) and its RSS sampled every few ms stay where they were."""
    import requests

    url, plan = tiny_served["url"], tiny_served["plan"]
    port = int(url.rsplit(":", 1)[1])
    pid = requests.get(f"{url}/healthz", timeout=30).json()["pid"]
    requests.post(f"{url}/v1/classify", json={"texts": ["warm", "up"]}, timeout=60)
    peak_before, rss_before = _vm(pid, "VmHWM"), _vm(pid, "VmRSS")
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_vm(pid, "VmRSS"))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {200 * 10**6}\r\n\r\n").encode()
    assert _status_of_upload(port, head) == (413, 0)  # refused before a byte of the body was sent
    chunk = b"x" * 65536
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    chunked = b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, sent = _status_of_upload(port, chunked, iter(lambda: framed, None), 8 * 2**20)
    stop.set()
    sampler.join()
    peak_after = _vm(pid, "VmHWM")
    record("upload_attack", budget_bytes=plan.budget_bytes, max_rss_bytes=max(samples), rss_before_bytes=rss_before,
           peak_before_bytes=peak_before, peak_after_bytes=peak_after, chunked_bytes_sent=sent)
    assert status == 413 and sent >= plan.max_request_bytes, (status, sent)
    assert peak_after - peak_before <= 20 * 2**20
    assert max(samples) - rss_before <= 20 * 2**20, (max(samples), rss_before)
    assert max(samples) <= plan.budget_bytes
    assert requests.get(f"{url}/healthz", timeout=30).json()["pid"] == pid  # the same replica, still serving
    assert requests.post(f"{url}/v1/classify", json={"text": "still here"}, timeout=60).status_code == 200


def _machine_address() -> str:
    """This machine's address on its network (not loopback), as another host would reach it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        return str(probe.getsockname()[0])


@pytest.mark.slow
def test_local_ray_and_serve_listen_on_loopback_only(tiny_served) -> None:
    """Every listening socket of the processes this test session started (GCS, raylet, workers, agents, the
    Serve proxy) is bound to 127.0.0.1 (what `ss -ltnp` shows, read from /proc). The one exception is Ray
    2.60's own: each Serve replica's inter-deployment gRPC server binds [::] unconditionally
    (ray/serve/_private/replica.py); it must refuse a caller without the cluster's token."""
    import grpc
    import psutil

    started = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    listening = [c for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.pid in started]
    assert len(listening) >= 5, listening  # GCS, raylet, the Serve proxy, ... were found
    loopback = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    exposed = [c for c in listening if c.laddr.ip not in loopback]
    names = {psutil.Process(c.pid).name() for c in exposed}
    assert all(name.startswith("ray::ServeReplica") for name in names), names
    address = _machine_address()
    for conn in exposed:
        channel = grpc.insecure_channel(f"{address}:{conn.laddr.port}")
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
        with pytest.raises(grpc.RpcError) as refused:
            call(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value
        channel.close()


# ----------------------------------------------------------------------------------------- Helm values


HELM_CASES = [  # (id, values, words of the error)
    ("mlflow-replicas-on-sqlite", {"mlflow": {"replicas": 2}}, "SQLite allows exactly 1 replica"),
    ("memory-no-unit", {"ray": {"head": {"memory": "8"}}}, "'8' does not match pattern"),
    ("image-tag-latest", {"image": {"tag": "latest"}}, "/image/tag"),
    ("image-digest-malformed", {"image": {"digest": "sha256:123"}}, "/image/digest"),
    ("mlflow-auth-without-secret", {"mlflow": {"auth": {"enabled": True, "existingSecret": ""}}},
     "mlflow.auth.existingSecret"),
    ("network-policy-bad-peer", {"networkPolicy": {"mlflow": {"from": "everyone"}}}, "/networkPolicy/mlflow/from"),
    ("password-in-values", {"mlflow": {"auth": {"password": "hunter2"}}}, "additional properties 'password'"),
    ("unknown-top-level-key", {"bogus": 1}, "additional properties 'bogus' not allowed"),
]


@pytest.mark.parametrize(("name", "values", "words"), HELM_CASES, ids=[c[0] for c in HELM_CASES])
def test_helm_values_are_refused_with_their_message(name, values, words) -> None:
    import helm_python

    chart = helm_python.Chart.load(str(ROOT / "helm" / "tightfit"))
    with pytest.raises((helm_python.HelmValuesError, helm_python.HelmRenderError)) as info:
        chart.render(values, name="tf", namespace="ml")
    assert words in str(info.value)
    assert "Traceback" not in str(info.value)


def test_the_table_is_large_and_distinct() -> None:
    ids = [c.id for c in CLI_CASES] + [c[0] for c in HTTP_CASES] + [c[0] for c in HELM_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    json.dumps(ids)
