"""RepositoryModelLoad/Unload against a real server in explicit mode, through the real Triton client:
the bearer token, name checks, no traversal, no symlink escape, and load/unload/reload that work."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients.server_process import ServerProcess
from tests.protocols.conftest import CONTROL_TOKEN, TritonRunner
from tests.protocols.repositories import write_plain_triton_model


@pytest.fixture(scope="module")
def control_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("control")
    repository = root / "repository"
    repository.mkdir()
    write_plain_triton_model(repository, "simple")
    write_plain_triton_model(root / "outside", "stray")  # a valid model the server must never read
    return repository


@pytest.fixture(scope="module")
def control_server(control_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Explicit mode loading `simple` at start; the token comes from the environment (docs/PROTOCOLS.md)."""
    log = tmp_path_factory.mktemp("control_server") / "server.log"
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("NINEFOLD_MODEL_CONTROL_TOKEN", CONTROL_TOKEN)
        server = ServerProcess.start(
            control_repository, log=log, extra_args=["--model-control-mode", "explicit", "--load-model", "simple"]
        )
    with server:
        yield server


def _refused(step: dict, status: str, message: str) -> None:
    assert not step["ok"] and step["status"] == status, step
    assert message in step["message"], step["message"]


def test_load_and_unload_need_the_token(control_server: ServerProcess, tmp_path: Path) -> None:
    steps = TritonRunner(control_server.target, tmp_path).run([
        {"op": "load", "model": "simple"},
        {"op": "load", "model": "simple", "token": "wrong-token-0123456789"},
        {"op": "unload", "model": "simple"},
        {"op": "model_ready", "model": "simple"},
    ]).steps
    for step in steps[:3]:
        _refused(step, "UNAUTHENTICATED", "authorization: Bearer <token>")
    assert steps[3]["value"] is True


def test_nothing_outside_the_repository_can_be_loaded(
    control_server: ServerProcess, control_repository: Path, tmp_path: Path
) -> None:
    outside = control_repository.parent / "outside" / "stray"
    (control_repository / "escape").symlink_to(outside, target_is_directory=True)
    (control_repository / "sneaky" / "1").mkdir(parents=True)
    (control_repository / "sneaky" / "config.pbtxt").symlink_to(outside / "config.pbtxt")
    (control_repository / "sneaky" / "1" / "model.onnx").symlink_to(outside / "1" / "model.onnx")
    steps = TritonRunner(control_server.target, tmp_path).run([
        {"op": "load", "model": name, "token": CONTROL_TOKEN}
        for name in ("../outside/stray", "..", "simple/1", "escape", "sneaky", "missing")
    ] + [{"op": "model_ready", "model": name} for name in ("escape", "sneaky", "stray")]).steps
    for step in steps[:3]:
        _refused(step, "INVALID_ARGUMENT", "is not a plain folder name")
    for step in steps[3:5]:
        _refused(step, "INVALID_ARGUMENT", "outside the model repository")
    _refused(steps[5], "NOT_FOUND", "no model folder 'missing'")
    assert [step["value"] for step in steps[6:]] == [False, False, False]


def test_unload_load_and_a_model_added_after_start(
    control_server: ServerProcess, control_repository: Path, tmp_path: Path
) -> None:
    write_plain_triton_model(control_repository, "late")
    ints = np.arange(32, dtype=np.int32).reshape(2, 16)
    infer = {"op": "infer", "inputs": [{"name": "INPUT0", "datatype": "INT32", "array": "a"},
                                       {"name": "INPUT1", "datatype": "INT32", "array": "a"}]}
    result = TritonRunner(control_server.target, tmp_path).run([
        {"op": "load", "model": "late", "token": CONTROL_TOKEN},
        {**infer, "model": "late"},
        {"op": "unload", "model": "simple", "token": CONTROL_TOKEN},
        {"op": "model_ready", "model": "simple"},
        {**infer, "model": "simple"},
        {"op": "repository_index"},
        {"op": "load", "model": "simple", "token": CONTROL_TOKEN},
        {**infer, "model": "simple"},
    ], {"a": ints})
    steps = result.steps
    assert steps[0]["ok"] and steps[1]["ok"], steps[:2]
    np.testing.assert_array_equal(result.outputs["1/OUTPUT0"], 2 * ints)
    assert steps[2]["ok"] and steps[3]["value"] is False
    assert not steps[4]["ok"] and steps[4]["status"] in ("NOT_FOUND", "UNAVAILABLE")
    index = {entry["name"]: entry for entry in steps[5]["value"]["models"]}
    assert index["late"]["state"] == "READY" and index["simple"]["state"] == "UNAVAILABLE"
    assert steps[6]["ok"] and steps[7]["ok"]
    np.testing.assert_array_equal(result.outputs["7/OUTPUT1"], 0 * ints)


def test_explicit_mode_loads_nothing_at_start_unless_asked(control_repository: Path, tmp_path: Path) -> None:
    """As Triton: without --load-model the server is ready with no model, and loads on request."""
    ints = np.arange(16, dtype=np.int32).reshape(1, 16)
    infer = {"op": "infer", "model": "simple", "inputs": [{"name": "INPUT0", "datatype": "INT32", "array": "a"},
                                                          {"name": "INPUT1", "datatype": "INT32", "array": "a"}]}
    with ServerProcess.start(
        control_repository, log=tmp_path / "server.log", env={"NINEFOLD_MODEL_CONTROL_TOKEN": CONTROL_TOKEN},
        extra_args=["--model-control-mode", "explicit"],
    ) as server:
        result = TritonRunner(server.target, tmp_path).run([
            {"op": "ready"},
            {"op": "model_ready", "model": "simple"},
            {"op": "repository_index"},
            {"op": "load", "model": "simple", "token": CONTROL_TOKEN},
            infer,
        ], {"a": ints})
    steps = result.steps
    assert steps[0]["value"] is True and steps[1]["value"] is False
    index = {entry["name"]: entry for entry in steps[2]["value"]["models"]}
    assert index["simple"]["state"] == "UNAVAILABLE" and index["simple"]["reason"] == "not loaded"
    assert steps[3]["ok"] and steps[4]["ok"], steps[3:]
    np.testing.assert_array_equal(result.outputs["4/OUTPUT0"], 2 * ints)


def test_a_symlink_swapped_while_loading_never_loads_a_file_from_outside(
    control_server: ServerProcess, control_repository: Path, tmp_path: Path
) -> None:
    """`racy` flips between a folder inside the repository and a look-alike outside it while the server
    checks and loads it, again and again: every load either refuses or loads only the inside files."""
    inside = write_plain_triton_model(control_repository / ".racy_inside", "racy").parent  # dot folders: no model
    outside = write_plain_triton_model(control_repository.parent / "outside_racy", "racy", swapped=True)
    link, spare = control_repository / "racy", control_repository / ".racy_next"
    link.symlink_to(inside / "racy", target_is_directory=True)
    stop = threading.Event()

    def flip() -> None:
        pauses = itertools.cycle((0.0, 0.0005, 0.002, 0.0, 0.01))
        for target in itertools.cycle((outside, inside / "racy")):
            if stop.is_set():
                break
            spare.unlink(missing_ok=True)
            spare.symlink_to(target, target_is_directory=True)
            os.replace(spare, link)  # atomic: `racy` always exists, pointing one way or the other
            time.sleep(next(pauses))

    ints = np.arange(16, dtype=np.int32).reshape(1, 16)
    tries = 100
    plan = [step for _ in range(tries) for step in (
        {"op": "load", "model": "racy", "token": CONTROL_TOKEN},
        {"op": "infer", "model": "racy", "inputs": [{"name": "INPUT0", "datatype": "INT32", "array": "a"},
                                                    {"name": "INPUT1", "datatype": "INT32", "array": "a"}]},
        {"op": "model_config", "model": "racy"},
    )]
    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        result = TritonRunner(control_server.target, tmp_path).run(plan, {"a": ints})
    finally:
        stop.set()
        flipper.join()
    loads, infers, configs = result.steps[0::3], result.steps[1::3], result.steps[2::3]
    for index, (answer, config) in enumerate(zip(infers, configs, strict=True)):
        if answer["ok"]:
            np.testing.assert_array_equal(result.outputs[f"{3 * index + 1}/OUTPUT0"], 2 * ints)
            assert config["value"]["config"]["max_batch_size"] == 8, config
    refused = [step["message"] for step in loads if not step["ok"]]
    assert refused, "the swap never caught a load: the test proved nothing"
    assert all("outside the model repository" in message for message in refused), refused


def test_a_failed_reload_says_why_and_the_loaded_version_keeps_serving(
    control_server: ServerProcess, control_repository: Path, tmp_path: Path
) -> None:
    folder = write_plain_triton_model(control_repository, "reloaded")
    ints = np.arange(16, dtype=np.int32).reshape(1, 16)
    load = {"op": "load", "model": "reloaded", "token": CONTROL_TOKEN}
    infer = {"op": "infer", "model": "reloaded", "inputs": [{"name": "INPUT0", "datatype": "INT32", "array": "a"},
                                                            {"name": "INPUT1", "datatype": "INT32", "array": "a"}]}
    runner = TritonRunner(control_server.target, tmp_path)
    assert runner.run([load], {"a": ints}).steps[0]["ok"]
    (folder / "1" / "model.onnx").write_bytes(b"not an ONNX file")
    broken_model = runner.run([load, infer], {"a": ints}).steps
    (folder / "config.pbtxt").write_text("this is { not a config")
    broken_config = runner.run([load, infer], {"a": ints}).steps
    _refused(broken_model[0], "UNAVAILABLE", "could not be reloaded (the runtime could not load the model")
    _refused(broken_config[0], "UNAVAILABLE", "could not be reloaded (reloaded/config.pbtxt")
    assert broken_model[1]["ok"] and broken_config[1]["ok"], "the version loaded before keeps serving"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--load-model", "simple"], "--load-model needs --model-control-mode explicit"),
        (["--model-control-mode", "explicit", "--load-model", "../simple"], "is not a plain folder name"),
        (["--model-control-mode", "explicit", "--load-model", "simple,missing"], "no model folder 'missing'"),
    ],
    ids=["without-explicit-mode", "bad-name", "missing-folder"],
)
def test_bad_load_model_settings_refuse_to_start(control_repository: Path, args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--model-repository", str(control_repository), "--port", "0",
         "--metrics-port", "0", *args],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "NINEFOLD_MODEL_CONTROL_TOKEN": CONTROL_TOKEN},
    )
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr


def test_explicit_mode_without_a_token_refuses_to_start(control_repository: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serving", "--model-repository", str(control_repository), "--port", "0",
         "--metrics-port", "0", "--model-control-mode", "explicit"],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    assert "needs a bearer token of at least 16 characters" in done.stderr
    assert "Traceback" not in done.stderr


def test_http_load_and_unload_follow_the_same_token_rule(control_server: ServerProcess) -> None:
    http = httpclient.InferenceServerClient(control_server.http_target)
    bearer = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
    try:
        for headers in (None, {"Authorization": "Bearer wrong-token-0123456789"}):
            with pytest.raises(InferenceServerException, match="authorization: Bearer <token>") as refused:
                http.unload_model("simple", headers=headers)
            assert refused.value.status() == "401"
        with pytest.raises(InferenceServerException, match="is not a plain folder name"):
            http.load_model("..", headers=bearer)
        http.unload_model("simple", headers=bearer)
        assert not http.is_model_ready("simple")
        http.load_model("simple", headers=bearer)
        assert http.is_model_ready("simple")
        assert [m["state"] for m in http.get_model_repository_index() if m["name"] == "simple"] == ["READY"]
    finally:
        http.close()
