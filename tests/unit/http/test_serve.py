"""``ingest serve`` start-up: authentication required, TLS files checked, the debug listener.

uvicorn and the debug listener are replaced by recorders: these tests check what
``serve`` decides and hands over, not the servers (tests/integration/test_tls.py and
test_debug_listener.py run the real thing).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ingest import cli as cli_module
from ingest import logs
from ingest.cli import cli
from ingest.http import server
from tests.tlsfiles import TLSFiles, make_tls_files


class Recorder:
    """Stands in for uvicorn.run and the debug listener."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.listeners: list[tuple[str, int]] = []
        self.stopped = 0

    def run(self, app: str, **kwargs: Any) -> None:
        self.runs.append({"app": app, **kwargs})

    def listener(self, settings: Any, address: tuple[str, int], log_level: str) -> Any:
        self.listeners.append(address)
        recorder = self

        class Listener:
            def stop(self) -> None:
                recorder.stopped += 1

        return Listener()


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    import uvicorn

    rec = Recorder()
    monkeypatch.setattr(uvicorn, "run", rec.run)
    monkeypatch.setattr(cli_module, "_start_debug_listener", rec.listener)
    monkeypatch.setattr(server, "fit_fd_limit", lambda n: (n, None))
    monkeypatch.setattr(logs, "configure", lambda *a, **k: None)  # CliRunner's stderr closes
    return rec


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _serve(args: list[str], env: dict[str, str]) -> Any:
    return CliRunner().invoke(cli, ["serve", *args], env=env)


def test_serve_refuses_to_start_without_INGEST_AUTH(recorder: Recorder) -> None:  # noqa: N802
    result = _serve([], {"INGEST_AUTH": ""})
    assert result.exit_code == 2, result.output
    assert "error: configuration: INGEST_AUTH" in result.output
    assert "none, htpasswd or token" in result.output
    assert "Traceback" not in result.output
    assert recorder.runs == []
    assert recorder.listeners == []


def test_serve_reports_a_broken_htpasswd_set_up_as_a_configuration_error(
    recorder: Recorder, tmp_path: Path
) -> None:
    env = {"INGEST_AUTH": "htpasswd", "INGEST_AUTH_HTPASSWD": str(tmp_path / "missing")}
    result = _serve([], env)
    assert result.exit_code == 2, result.output
    assert "error: configuration:" in result.output
    assert "Traceback" not in result.output
    assert recorder.runs == []


def test_serve_with_auth_none_starts_plain_http_and_the_debug_listener(
    recorder: Recorder,
) -> None:
    result = _serve([], {"INGEST_AUTH": "none"})
    assert result.exit_code == 0, result.output
    (run,) = recorder.runs
    assert run["app"] == "ingest.http.app:app_factory"
    assert run["ssl_certfile"] is None
    assert run["ssl_keyfile"] is None
    assert recorder.listeners == [("127.0.0.1", 5001)]  # INGEST_DEBUG_ADDR's default
    assert recorder.stopped == 1  # stopped when the server returns


@pytest.mark.parametrize(
    ("option", "env", "expected"),
    [
        (["--debug-addr", "127.0.0.1:6123"], {}, [("127.0.0.1", 6123)]),
        ([], {"INGEST_DEBUG_ADDR": "0.0.0.0:7001"}, [("0.0.0.0", 7001)]),  # noqa: S104
        (["--debug-addr", "[::1]:7002"], {}, [("::1", 7002)]),
        (["--debug-addr", "off"], {}, []),
        (["--debug-addr", ""], {}, []),
        ([], {"INGEST_DEBUG_ADDR": "off"}, []),
        (["--debug-addr", "off"], {"INGEST_DEBUG_ADDR": "127.0.0.1:7003"}, []),
    ],
)
def test_the_debug_address_comes_from_the_option_or_the_environment(
    recorder: Recorder, option: list[str], env: dict[str, str], expected: list[tuple[str, int]]
) -> None:
    result = _serve(option, {"INGEST_AUTH": "none", **env})
    assert result.exit_code == 0, result.output
    assert recorder.listeners == expected
    assert len(recorder.runs) == 1


@pytest.mark.parametrize("value", ["5001", "localhost", "127.0.0.1:", "127.0.0.1:99999", "h:p"])
def test_a_malformed_debug_address_is_a_configuration_error(recorder: Recorder, value: str) -> None:
    result = _serve(["--debug-addr", value], {"INGEST_AUTH": "none"})
    assert result.exit_code == 2, result.output
    assert "--debug-addr/INGEST_DEBUG_ADDR" in result.output
    assert "host:port" in result.output
    assert recorder.runs == []


def test_a_taken_debug_port_stops_serve_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    runs: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(app))
    monkeypatch.setattr(server, "fit_fd_limit", lambda n: (n, None))
    monkeypatch.setattr(logs, "configure", lambda *a, **k: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _serve(["--debug-addr", f"127.0.0.1:{port}"], {"INGEST_AUTH": "none"})
    assert result.exit_code == 2, result.output
    assert f"the debug listener cannot listen on 127.0.0.1:{port}" in result.output
    assert "--debug-addr or INGEST_DEBUG_ADDR" in result.output
    assert runs == []


def test_tls_files_from_the_options_reach_uvicorn(recorder: Recorder, tls: TLSFiles) -> None:
    args = ["--tls-cert", tls.server_cert, "--tls-key", tls.server_key]
    result = _serve(args, {"INGEST_AUTH": "none"})
    assert result.exit_code == 0, result.output
    (run,) = recorder.runs
    assert run["ssl_certfile"] == tls.server_cert
    assert run["ssl_keyfile"] == tls.server_key


def test_the_options_override_the_tls_settings(
    recorder: Recorder, tls: TLSFiles, tmp_path: Path
) -> None:
    env = {
        "INGEST_AUTH": "none",
        "INGEST_TLS_CERT": str(tmp_path / "old.pem"),  # missing: the options win
        "INGEST_TLS_KEY": str(tmp_path / "old.key"),
    }
    args = ["--tls-cert", tls.server_cert, "--tls-key", tls.server_key]
    result = _serve(args, env)
    assert result.exit_code == 0, result.output
    assert recorder.runs[0]["ssl_certfile"] == tls.server_cert


def test_a_missing_tls_file_is_a_configuration_error_naming_it(
    recorder: Recorder, tls: TLSFiles, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nope.pem")
    result = _serve(["--tls-cert", missing, "--tls-key", tls.server_key], {"INGEST_AUTH": "none"})
    assert result.exit_code == 2, result.output
    assert f"--tls-cert/INGEST_TLS_CERT: no TLS certificate file {missing}" in result.output
    assert recorder.runs == []


def test_a_key_that_does_not_match_the_certificate_is_refused(
    recorder: Recorder, tls: TLSFiles
) -> None:
    result = _serve(
        ["--tls-cert", tls.server_cert, "--tls-key", tls.client_key], {"INGEST_AUTH": "none"}
    )
    assert result.exit_code == 2, result.output
    assert "are not a PEM certificate chain and its unencrypted private key" in result.output
    assert "Traceback" not in result.output
    assert recorder.runs == []


def test_a_file_that_is_not_pem_is_refused(
    recorder: Recorder, tls: TLSFiles, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    result = _serve(
        ["--tls-cert", str(garbage), "--tls-key", tls.server_key], {"INGEST_AUTH": "none"}
    )
    assert result.exit_code == 2, result.output
    assert "not a PEM certificate chain" in result.output


def test_a_certificate_without_its_key_is_refused(recorder: Recorder, tls: TLSFiles) -> None:
    result = _serve(["--tls-cert", tls.server_cert], {"INGEST_AUTH": "none"})
    assert result.exit_code == 2, result.output
    assert "INGEST_TLS_CERT and INGEST_TLS_KEY go together" in result.output


def test_granian_runs_as_a_child_when_this_process_serves_the_debug_listener(
    recorder: Recorder, tls: TLSFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    started: list[list[str]] = []

    class Child:
        def __init__(self, args: list[str]) -> None:
            started.append(args)

        def wait(self) -> int:
            return 0

        def send_signal(self, signum: int) -> None:
            pass

    monkeypatch.setattr(subprocess, "Popen", Child)
    monkeypatch.setattr("signal.signal", lambda *a: None)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    args = ["--server", "granian", "--tls-cert", tls.server_cert, "--tls-key", tls.server_key]
    result = _serve(args, {"INGEST_AUTH": "none"})
    assert result.exit_code == 0, result.output
    (argv,) = started
    assert argv[argv.index("--ssl-certificate") + 1] == tls.server_cert
    assert argv[argv.index("--ssl-keyfile") + 1] == tls.server_key
    assert argv[-1] == "ingest.http.app:app_factory"
    assert recorder.listeners == [("127.0.0.1", 5001)]
    assert recorder.stopped == 1


def test_parse_listen_address() -> None:
    assert server.parse_listen_address("127.0.0.1:5001") == ("127.0.0.1", 5001)
    assert server.parse_listen_address(" localhost:80 ") == ("localhost", 80)
    assert server.parse_listen_address("[::1]:5001") == ("::1", 5001)
    for off in ("", "off", "OFF", "none"):
        assert server.parse_listen_address(off) is None
    with pytest.raises(ValueError, match="host:port"):
        server.parse_listen_address(":5001")
