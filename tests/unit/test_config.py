"""Settings.from_env: defaults, fallbacks, size parsing, and errors that name the variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.config import ConfigError, Settings, parse_mode, parse_size


def test_an_empty_environment_gives_the_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.storage_root == "./var/storage"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.broker_url == s.result_backend == s.redis_url
    assert s.max_blob_size == 16 << 30
    assert s.verify_chunk == 4 << 20
    assert s.task_max_retries == 5
    # Derived: just above the longest verification time limit (recovery waits this long).
    assert s.visibility_timeout == s.max_time_limit() + 60 == 940


def test_unrelated_and_empty_variables_are_ignored() -> None:
    env = {"PATH": "/bin", "INGEST_BROKER_URL": "", "INGEST_UNKNOWN": "x", "HOME": "/root"}
    assert Settings.from_env(env) == Settings()


def test_redis_url_is_the_fallback_for_broker_and_backend() -> None:
    s = Settings.from_env({"REDIS_URL": "redis://cache:6380/2"})
    assert s.broker_url == s.result_backend == s.redis_url == "redis://cache:6380/2"


def test_ingest_broker_url_overrides_the_redis_url_for_the_broker_only() -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://cache:6380/2",
            "INGEST_BROKER_URL": "redis://broker:6379/0",
        }
    )
    assert s.broker_url == "redis://broker:6379/0"
    assert s.result_backend == "redis://cache:6380/2"
    s = Settings.from_env({"INGEST_RESULT_BACKEND": "redis://results/1"})
    assert (s.broker_url, s.result_backend) == (s.redis_url, "redis://results/1")


def test_a_custom_prefix_reads_other_variables() -> None:
    s = Settings.from_env({"APP_STORAGE_ROOT": "/srv", "INGEST_STORAGE_ROOT": "/no"}, prefix="APP_")
    assert s.storage_root == "/srv"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16GiB", 16 << 30),
        ("4MiB", 4 << 20),
        ("1000", 1000),
        ("1000b", 1000),
        ("2KiB", 2048),
        ("2k", 2000),
        ("3MB", 3_000_000),
        ("1TiB", 1 << 40),
        (" 5 gib ", 5 << 30),
    ],
)
def test_sizes_parse_with_binary_and_decimal_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1.5GiB", "-1", "16XB", "GiB", "1 i", "16 GiBs"])
def test_a_malformed_size_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_sizes_in_the_environment_are_parsed() -> None:
    s = Settings.from_env(
        {
            "INGEST_MAX_BLOB_SIZE": "1GiB",
            "INGEST_VERIFY_CHUNK": "1MiB",
            "INGEST_VERIFY_MIN_RATE": "100MB",
            "INGEST_TASK_MAX_RETRIES": "7",
            "INGEST_VISIBILITY_TIMEOUT": "7200",
        }
    )
    assert (s.max_blob_size, s.verify_chunk, s.verify_min_rate) == (1 << 30, 1 << 20, 10**8)
    assert (s.task_max_retries, s.visibility_timeout) == (7, 7200)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("INGEST_MAX_BLOB_SIZE", "huge"),
        ("INGEST_VERIFY_CHUNK", "4 MiB please"),
        ("INGEST_TASK_MAX_RETRIES", "five"),
        ("INGEST_VISIBILITY_TIMEOUT", "1h"),
        ("INGEST_RESULT_EXPIRES", "1.5"),
    ],
)
def test_an_unparseable_value_is_a_config_error_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: value})


def test_a_visibility_timeout_below_the_longest_time_limit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="INGEST_VISIBILITY_TIMEOUT"):
        Settings.from_env({"INGEST_VISIBILITY_TIMEOUT": "600"})
    # 16 GiB at 20 MiB/s is 820 s, plus 60 s.
    limit = Settings().max_time_limit()
    assert limit == 60 + 820
    with pytest.raises(ConfigError):
        Settings.from_env({"INGEST_VISIBILITY_TIMEOUT": str(limit)})
    assert Settings.from_env({"INGEST_VISIBILITY_TIMEOUT": str(limit + 1)}).visibility_timeout


def test_a_smaller_max_blob_size_allows_a_shorter_visibility_timeout() -> None:
    s = Settings.from_env({"INGEST_MAX_BLOB_SIZE": "20MiB", "INGEST_VISIBILITY_TIMEOUT": "62"})
    assert s.max_time_limit() == 61


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("INGEST_MAX_BLOB_SIZE", "0"),
        ("INGEST_VERIFY_CHUNK", "0"),
        ("INGEST_VERIFY_MIN_RATE", "0"),
        ("INGEST_TASK_MAX_RETRIES", "-1"),
    ],
)
def test_an_out_of_range_value_is_a_config_error(var: str, value: str) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({var: value})


@pytest.mark.parametrize(
    ("var", "value"),
    [("INGEST_MAX_BLOB_SIZE", "0"), ("INGEST_TASK_MAX_RETRIES", "-1")],
)
def test_an_out_of_range_value_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: value})


def test_settings_are_immutable() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_blob_size = 1  # type: ignore[misc]


def test_time_limit_scales_with_size_and_is_capped_at_the_maximum() -> None:
    s = Settings()
    rate = s.verify_min_rate
    assert s.time_limit(0) == s.verify_base_time
    assert s.time_limit(1) == s.verify_base_time + 1
    assert s.time_limit(rate) == s.verify_base_time + 1
    assert s.time_limit(rate + 1) == s.verify_base_time + 2
    assert s.time_limit(10 * rate) == s.verify_base_time + 10
    assert s.time_limit(None) == s.max_time_limit()
    assert s.time_limit(s.max_blob_size * 4) == s.max_time_limit()
    sizes = [0, 1, rate, 5 * rate, 100 * rate, s.max_blob_size]
    limits = [s.time_limit(n) for n in sizes]
    assert limits == sorted(limits)


def test_a_config_file_is_read_and_the_environment_overrides_it(tmp_path: Path) -> None:
    f = tmp_path / "ingest.env"
    f.write_text(
        "# production\nINGEST_MAX_BLOB_SIZE=2GiB\nREDIS_URL='redis://cache:6379/1'\n\n"
        "INGEST_TASK_MAX_RETRIES=7\n"
    )
    s = Settings.from_env({"INGEST_CONFIG_FILE": str(f), "INGEST_TASK_MAX_RETRIES": "3"})
    assert s.max_blob_size == 2 << 30
    assert s.redis_url == "redis://cache:6379/1"
    assert s.task_max_retries == 3


@pytest.mark.parametrize("content", ["just words\n", "lower=case\n", "=x\n"])
def test_a_malformed_config_file_names_the_file_and_line(tmp_path: Path, content: str) -> None:
    f = tmp_path / "bad.env"
    f.write_text("INGEST_LOG_LEVEL=INFO\n" + content)
    with pytest.raises(ConfigError, match=r"bad\.env:2"):
        Settings.from_env({"INGEST_CONFIG_FILE": str(f)})


def test_a_missing_config_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="INGEST_CONFIG_FILE"):
        Settings.from_env({"INGEST_CONFIG_FILE": "/nonexistent/ingest.env"})


@pytest.mark.parametrize(
    ("var", "value"),
    [("INGEST_LOG_FORMAT", "xml"), ("INGEST_LOG_LEVEL", "LOUD"), ("INGEST_STAGING_FSYNC", "maybe")],
)
def test_bad_logging_and_fsync_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: value})


def test_prehash_settings_parse_and_zero_disables() -> None:
    s = Settings.from_env({"INGEST_PREHASH_MIN_SIZE": "64MiB", "INGEST_PREHASH_IDLE": "30s"})
    assert (s.prehash_min_size, s.prehash_idle) == (64 << 20, 30.0)
    assert Settings.from_env({"INGEST_PREHASH_MIN_SIZE": "0"}).prehash_min_size == 0
    assert Settings().prehash_min_size == 32 << 20


@pytest.mark.parametrize(
    ("var", "value"), [("INGEST_PREHASH_MIN_SIZE", "-1"), ("INGEST_PREHASH_IDLE", "0")]
)
def test_bad_prehash_settings_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: value})


@given(mode=st.integers(min_value=0, max_value=0o7777))
def test_modes_parse_as_octal_in_every_spelling(mode: int) -> None:
    for text in (f"{mode:o}", f"{mode:04o}", f"0o{mode:o}", f" {mode:o} "):
        assert parse_mode(text) == mode


@given(text=st.text(max_size=8))
def test_a_mode_is_octal_digits_or_a_value_error(text: str) -> None:
    try:
        mode = parse_mode(text)
    except ValueError:
        return
    assert 0 <= mode <= 0o7777


def test_file_modes_default_private_and_parse_from_the_environment() -> None:
    assert (Settings().file_mode, Settings().dir_mode) == (0o640, 0o750)
    s = Settings.from_env({"INGEST_FILE_MODE": "0660", "INGEST_DIR_MODE": "770"})
    assert (s.file_mode, s.dir_mode) == (0o660, 0o770)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("INGEST_FILE_MODE", "0440"),  # no owner write: every new file would look sealed
        ("INGEST_FILE_MODE", "644a"),
        ("INGEST_FILE_MODE", "10640"),
        ("INGEST_DIR_MODE", "0640"),  # a directory the owner cannot enter
        ("INGEST_DIR_MODE", "rwx"),
    ],
)
def test_bad_modes_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        Settings.from_env({var: value})
