"""Settings.from_env: defaults, fallbacks, units, and errors that name the variable; the
declarations and the README table they render."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.config import (
    BOOL,
    DURATION,
    SECONDS,
    SIZE,
    ConfigError,
    Declaration,
    Settings,
    declarations,
    parse_mode,
    parse_size,
    render_markdown,
    replace_table,
)
from ingest.config import main as config_main
from ingest.units import (
    DURATION_UNITS,
    SIZE_UNITS,
    format_duration,
    format_size,
    parse_duration,
    parse_seconds,
)


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
        ("2kB", 2000),
        ("2KB", 2000),
        ("3MB", 3_000_000),
        ("7 gb", 7 * 10**9),
        ("3Gi", 3 << 30),
        ("1TiB", 1 << 40),
        (" 5 gib ", 5 << 30),
        ("1.5GiB", 3 << 29),
        (".5KiB", 512),
    ],
)
def test_sizes_parse_with_binary_and_decimal_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "lots", "1.1KiB", "0.5", "-1", "16XB", "GiB", "1 i", "16 GiBs", "1e3", "16G", "2k"],
)
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
        ("INGEST_TASK_MAX_RETRIES", "5.0"),
        ("INGEST_VISIBILITY_TIMEOUT", "1h please"),
        ("INGEST_VISIBILITY_TIMEOUT", "3600500ms"),
        ("INGEST_RESULT_EXPIRES", "1.5"),
        ("INGEST_TARSUM_MAX_RATIO", "10m"),
        ("INGEST_PURGE_AGE", "2H"),
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


# -- one rule per kind: every unit, every setting of the kind --------------------------

ROOT = Path(__file__).resolve().parents[2]
DECLARED = declarations()
SIZES = [d for d in DECLARED if d.spec.kind is SIZE]
DURATIONS = [d for d in DECLARED if d.spec.kind in (DURATION, SECONDS)]
BOOLEANS = [d for d in DECLARED if d.spec.kind is BOOL]


def test_every_kind_has_its_settings() -> None:
    # The property tests below would pass vacuously over an empty list.
    assert {d.field for d in SIZES} >= {"max_blob_size", "verify_min_rate", "fsck_budget"}
    assert {d.field for d in DURATIONS} >= {"purge_age", "result_expires", "visibility_timeout"}
    assert {d.field for d in BOOLEANS} == {
        "fsck_repair",
        "staging_fsync",
        "delete_enabled",
        "read_only",
        "notify_pulls",
    }


def test_integer_durations_take_units_now() -> None:
    s = Settings.from_env(
        {
            "INGEST_RESULT_EXPIRES": "7d",
            "INGEST_VISIBILITY_TIMEOUT": "1h",
            "INGEST_VERIFY_BASE_TIME": "2000ms",
        }
    )
    assert (s.result_expires, s.visibility_timeout, s.verify_base_time) == (604800, 3600, 2)
    assert isinstance(s.result_expires, int)


def test_a_fraction_of_a_second_is_refused_where_seconds_are_whole() -> None:
    with pytest.raises(ConfigError, match=r"INGEST_RESULT_EXPIRES: not a whole number of seconds"):
        Settings.from_env({"INGEST_RESULT_EXPIRES": "1500ms"})


def test_a_ratio_is_a_plain_number_not_a_duration() -> None:
    assert Settings.from_env({"INGEST_TARSUM_MAX_RATIO": "2.5"}).tarsum_max_ratio == 2.5


@pytest.mark.parametrize(
    ("text", "binary", "decimal"), [("16G", "16GiB", "16GB"), ("2k", "2KiB", "2kB")]
)
def test_a_bare_size_prefix_is_refused_with_both_spellings(
    text: str, binary: str, decimal: str
) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"INGEST_MAX_BLOB_SIZE": text})
    message = str(err.value)
    assert message.startswith("INGEST_MAX_BLOB_SIZE: ambiguous size unit")
    assert binary in message
    assert decimal in message


def test_a_floor_is_shown_in_the_units_of_its_setting() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"INGEST_PURGE_AGE": "30m"})
    assert str(err.value).startswith("INGEST_PURGE_AGE: must be at least 1h: a shorter cut-off")


def test_choices_match_in_any_case_and_keep_the_declared_spelling() -> None:
    s = Settings.from_env({"INGEST_LOG_LEVEL": "debug", "INGEST_LOG_FORMAT": "TEXT"})
    assert (s.log_level, s.log_format) == ("DEBUG", "text")
    assert Settings(log_level="warning").log_level == "WARNING"


@given(
    decl=st.sampled_from(SIZES),
    number=st.integers(min_value=1, max_value=4096),
    unit=st.sampled_from(sorted(SIZE_UNITS)),
    upper=st.booleans(),
)
def test_every_size_setting_takes_every_size_unit(
    decl: Declaration, number: int, unit: str, upper: bool
) -> None:
    text = f"{number}{unit.upper() if upper else unit}"
    s = Settings.from_env({decl.variable: text})
    assert getattr(s, decl.field) == number * SIZE_UNITS[unit]


@given(
    decl=st.sampled_from(DURATIONS),
    number=st.decimals(min_value=0, max_value=10**6, places=3),
    unit=st.sampled_from(["", *DURATION_UNITS]),
)
def test_every_duration_setting_takes_every_duration_unit(
    decl: Declaration, number: Decimal, unit: str
) -> None:
    text = f"{number:f}{unit}"
    seconds = Fraction(number) * DURATION_UNITS[unit or "s"]
    if decl.spec.kind is SECONDS and seconds.denominator != 1:
        with pytest.raises(ConfigError, match=f"{decl.variable}: not a whole number of seconds"):
            Settings.from_env({decl.variable: text})
        return
    value: dict[str, Any] = {
        decl.field: int(seconds) if decl.spec.kind is SECONDS else float(seconds)
    }
    try:  # the same value given directly: the bounds and cross-checks decide alike
        expected = Settings(**value)
    except ConfigError:
        with pytest.raises(ConfigError, match=decl.variable):
            Settings.from_env({decl.variable: text})
        return
    assert Settings.from_env({decl.variable: text}) == expected


@given(
    decl=st.sampled_from(BOOLEANS),
    text=st.sampled_from(["1", "true", "yes", "on", "0", "false", "no", "off"]),
    upper=st.booleans(),
)
def test_every_boolean_setting_takes_every_spelling(
    decl: Declaration, text: str, upper: bool
) -> None:
    s = Settings.from_env({decl.variable: text.upper() if upper else text})
    assert getattr(s, decl.field) is (text in ("1", "true", "yes", "on"))


@given(size=st.integers(min_value=0, max_value=1 << 70))
def test_a_formatted_size_parses_back_to_itself(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(seconds=st.floats(min_value=0, max_value=1e15, allow_nan=False))
def test_a_formatted_duration_parses_back_to_itself(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(seconds=st.integers(min_value=0, max_value=10**12))
def test_whole_seconds_format_and_parse_back_exactly(seconds: int) -> None:
    assert parse_seconds(format_duration(seconds)) == seconds


@given(text=st.text(max_size=12))
def test_size_and_duration_parsers_return_a_value_or_a_value_error(text: str) -> None:
    for parse in (parse_size, parse_duration, parse_seconds):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert value >= 0


def test_every_default_reads_back_from_its_formatted_spelling() -> None:
    for d in DECLARED:
        assert d.spec.kind.parse(d.spec.kind.format(d.default)) == d.default, d.variable


# -- the declarations: the README, the module's imports, the command --------------------


def test_the_readme_table_is_the_one_the_declarations_render() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    # Regenerate with: python -m ingest.config --write-readme README.md
    assert replace_table(readme) == readme
    for d in DECLARED:
        assert f"| `{d.variable}` |" in readme


def test_the_config_module_imports_nothing_of_ingest_but_its_units() -> None:
    code = (
        "import ingest.config, sys; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ingest', 'workers')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['ingest', 'ingest.config', 'ingest.units']"


def test_the_command_prints_the_settings_masked_or_names_the_bad_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@redis:6379/0")
    monkeypatch.setenv("INGEST_PURGE_AGE", "90m")
    assert config_main([]) == 0
    out = capsys.readouterr().out
    assert "REDIS_URL=redis://:***@redis:6379/0\n" in out
    assert "INGEST_PURGE_AGE=90m\n" in out
    assert "s3cret" not in out
    monkeypatch.setenv("INGEST_MAX_BLOB_SIZE", "16G")
    assert config_main([]) == 2
    assert "INGEST_MAX_BLOB_SIZE: ambiguous" in capsys.readouterr().err
    assert config_main(["--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"INGEST_AUTH": "htpasswd"}, "INGEST_AUTH_HTPASSWD"),
        (
            {
                "INGEST_AUTH": "token",
                "INGEST_AUTH_TOKEN_SERVICE": "s",
                "INGEST_AUTH_TOKEN_ISSUER": "i",
            },
            "INGEST_AUTH_TOKEN_REALM",
        ),
        (
            {
                "INGEST_AUTH": "token",
                "INGEST_AUTH_TOKEN_REALM": "https://auth.example/token",
                "INGEST_AUTH_TOKEN_SERVICE": "s",
                "INGEST_AUTH_TOKEN_ISSUER": "i",
            },
            "INGEST_AUTH_TOKEN_CERTS",
        ),
        ({"INGEST_TLS_CERT": "/etc/cert.pem"}, "INGEST_TLS_KEY"),
        ({"INGEST_AUTH": "ldap"}, "INGEST_AUTH"),
    ],
)
def test_an_incomplete_auth_or_tls_setup_is_a_config_error_naming_what_is_missing(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(env)


def test_auth_is_unset_by_default_and_any_case_of_a_mode_is_accepted() -> None:
    assert Settings().auth == ""
    assert Settings.from_env({"INGEST_AUTH": "None"}).auth == "none"
    assert not Settings().delete_enabled
    assert not Settings().read_only


def test_ingest_storage_is_another_name_for_the_storage_driver() -> None:
    assert Settings.from_env({"INGEST_STORAGE": "s3"}).storage_driver == "s3"
    assert (
        Settings.from_env({"INGEST_STORAGE": "s3", "INGEST_STORAGE_DRIVER": "s3"}).storage_driver
        == "s3"
    )
    with pytest.raises(ConfigError, match="INGEST_STORAGE=s3 and INGEST_STORAGE_DRIVER"):
        Settings.from_env({"INGEST_STORAGE": "s3", "INGEST_STORAGE_DRIVER": "filesystem"})
