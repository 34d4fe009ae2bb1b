"""ServerConfig from flags and NINEFOLD_* environment variables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from serving.__main__ import main
from serving.config import ServerConfig, build_parser, env_name, load_config


def test_defaults_follow_the_shared_conventions() -> None:
    config = load_config(["--model-repository", "repo"], env={})
    assert (config.model_repository, config.host, config.port, config.metrics_port) == (
        Path("repo"), "127.0.0.1", 8001, 8002
    )
    assert config.spin_wait is False and config.grace_seconds == 10.0


def test_environment_variables_set_values_and_flags_win() -> None:
    env = {"NINEFOLD_MODEL_REPOSITORY": "/models", "NINEFOLD_PORT": "9001", "NINEFOLD_SPIN_WAIT": "true",
           "NINEFOLD_GRACE_SECONDS": "2.5", "NINEFOLD_LOG_LEVEL": "debug"}
    config = load_config([], env=env)
    assert (config.model_repository, config.port, config.spin_wait, config.grace_seconds, config.log_level) == (
        Path("/models"), 9001, True, 2.5, "DEBUG"
    )
    assert load_config(["--port", "7000", "--no-spin-wait"], env=env).port == 7000
    assert load_config(["--no-spin-wait"], env=env).spin_wait is False
    settings = load_config(["--ort-threads", "3"], env=env).backend_settings()
    assert (settings.intra_op_threads, settings.spin_wait) == (3, True)


def test_image_limits_come_from_flags_and_environment_variables() -> None:
    env = {"NINEFOLD_MAX_REQUEST_IMAGE_PIXELS": "5000000", "NINEFOLD_MAX_DECODING_BYTES": "300000000"}
    limits = load_config(["--model-repository", "r", "--max-image-pixels", "1000000"], env=env).image_limits()
    assert (limits.max_pixels, limits.max_request_pixels, limits.max_decoding_bytes) == (
        1_000_000, 5_000_000, 300_000_000
    )
    defaults = load_config(["--model-repository", "r"], env={}).image_limits()
    assert (defaults.max_request_pixels, defaults.max_decoding_bytes) == (160_000_000, 1024 * 1024 * 1024)
    assert defaults.max_encoded_bytes == 64 * 1024 * 1024  # --max-message-bytes


def test_a_missing_repository_or_a_bad_value_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as missing:
        load_config([], env={})
    assert missing.value.code == 2
    with pytest.raises(SystemExit):
        load_config(["--model-repository", "r", "--port", "eighty"], env={})


def test_model_control_settings_are_typed_fields_with_the_same_env_convention() -> None:
    env = {"NINEFOLD_MODEL_CONTROL_MODE": "explicit", "NINEFOLD_MODEL_CONTROL_TOKEN": "t" * 16}
    config = load_config(["--model-repository", "r", "--load-model", "a,b"], env=env)
    assert (config.model_control_mode, config.model_control_token, config.load_model) == ("explicit", "t" * 16, "a,b")
    assert env_name("--model-control-mode") == "NINEFOLD_MODEL_CONTROL_MODE"
    with pytest.raises(SystemExit):
        load_config(["--model-repository", "r", "--model-control-mode", "implicit"], env={})


def test_the_parser_defaults_are_the_dataclass_defaults() -> None:
    """Defaults are written once (the fields); every field has its flag, and no flag lacks a field."""
    assert load_config(["--model-repository", "r"], env={}) == ServerConfig(model_repository=Path("r"))
    flags = {action.dest for action in build_parser({})._actions if action.dest != "help"}
    assert flags == {spec.name for spec in dataclasses.fields(ServerConfig)}


def test_help_documents_every_flag_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--help"])
    assert raised.value.code == 0
    text = capsys.readouterr().out
    for variable in ("NINEFOLD_MODEL_REPOSITORY", "NINEFOLD_PORT", "NINEFOLD_METRICS_PORT", "NINEFOLD_GRACE_SECONDS",
                     "NINEFOLD_MAX_MESSAGE_BYTES", "NINEFOLD_MAX_IMAGE_PIXELS", "NINEFOLD_MAX_IMAGES_PER_REQUEST",
                     "NINEFOLD_ORT_THREADS", "NINEFOLD_SPIN_WAIT", "NINEFOLD_LOG_LEVEL"):
        assert variable in text


def test_main_refuses_a_repository_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model-repository", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
