"""Closed by default: a Ray head with token auth and an MLflow server with basic auth, and
a micro ladder that goes through both without the token or the MLflow password landing
in any log, run, artifact or Ray session file.

Nothing here changes this process's environment for longer than one test (monkeypatch),
and the token lives in a temp file named by RAY_AUTH_TOKEN_PATH, so no ~/.ray/auth_token
is written.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from clipscale.tracking_auth import TrackingAuthError, check_tracking
from tests.conftest import FAKE_KEY_ID, FAKE_SECRET, _kill_ray_processes_under, free_port
from tests.test_job_submit import assert_no_secret_in_tree, micro_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LADDER_USER = "clipscale"
HOME_TOKEN = Path.home() / ".ray" / "auth_token"


def private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def http_status(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def _state(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.fixture(scope="module", autouse=True)
def _home_token_untouched():
    """Ray writes ~/.ray/auth_token when it generates a token itself; these tests never may."""
    before = _state(HOME_TOKEN)
    yield
    assert _state(HOME_TOKEN) == before, "a test here created or changed ~/.ray/auth_token"


# ---- fast: the check itself, no server -----------------------------------------------------


def test_check_tracking_refuses_a_uri_that_embeds_a_password():
    with pytest.raises(TrackingAuthError) as e:
        check_tracking("http://bob:hunter2-secret@127.0.0.1:5000")
    assert "hunter2-secret" not in str(e.value) and "bob:***@127.0.0.1:5000" in str(e.value)
    check_tracking("sqlite:////tmp/x.db")  # nothing to authenticate against


@pytest.mark.slow  # imports Ray (init is replaced, nothing starts); the fast tier loads no Ray
def test_runtime_env_never_carries_mlflow_credentials(monkeypatch):
    """What init_ray hands Ray (which logs it) has the tracking URI but no credential."""
    import ray

    from clipscale import ladder
    from clipscale.config import load_config

    # A unique user name: LADDER_USER ("clipscale") also names the package, which the runtime env cites.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user-" + secrets.token_hex(8))
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-" + secrets.token_hex(8))
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-" + secrets.token_hex(8))
    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    cfg = load_config(REPO / "experiments" / "configs" / "tiny.yaml", ["tracking.uri=http://127.0.0.1:5999"])
    ladder.init_ray(cfg)
    env = seen["runtime_env"]["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"
    for var in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME"):
        assert var not in env and os.environ[var] not in repr(seen), var


# ---- services with auth on -----------------------------------------------------------------


@dataclass
class AuthMlflow:
    uri: str
    admin_password: str
    password: str  # the ladder user's

    def client_env(self, password: str | None = None) -> dict:
        return {"MLFLOW_TRACKING_USERNAME": LADDER_USER, "MLFLOW_TRACKING_PASSWORD": password or self.password}


@dataclass
class TokenHead:
    dashboard: str
    temp_dir: str
    token: str
    client_env: dict  # what a user's shell has: the token's path, no MLflow password


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def http_status_or_none(url: str) -> int | None:
    try:
        return http_status(url)
    except OSError:
        return None


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while http_status_or_none(url) is None:
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{url} never answered: {log.read_text()[-2000:]}")
        time.sleep(1)


def _start_mlflow(d: Path, mlflow: AuthMlflow) -> tuple[subprocess.Popen, Path]:
    """`mlflow server --app-name basic-auth` on a loopback port, as cluster/local.sh starts it."""
    config = d / "auth.ini"  # no secret in it: the admin password comes from the environment
    config.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{d / 'auth.db'}\n"
                      "admin_username = admin\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                      "auth_cache_ttl_seconds = 60\n")
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow.admin_password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = d / "mlflow.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--backend-store-uri",
             f"sqlite:///{d / 'mlflow.db'}", "--artifacts-destination", str(d / "artifacts"),
             "--host", "127.0.0.1", "--port", mlflow.uri.rsplit(":", 1)[1], "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, log


def _make_ladder_user(d: Path, mlflow: AuthMlflow) -> None:
    """The ladder's non-admin user, made by cluster/mlflow/ensure_user.py as the admin."""
    made = subprocess.run(
        [sys.executable, str(REPO / "cluster" / "mlflow" / "ensure_user.py"), "--user", LADDER_USER,
         "--password-file", str(private_file(d / "ladder-password", mlflow.password))],
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.uri, "MLFLOW_TRACKING_USERNAME": "admin",
             "MLFLOW_TRACKING_PASSWORD": mlflow.admin_password}, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    assert mlflow.password not in made.stdout + made.stderr and mlflow.admin_password not in made.stdout + made.stderr


def _start_head(d: Path, mlflow: AuthMlflow, temp_dir: str) -> TokenHead:
    """`ray start --head` with RAY_AUTH_MODE=token, as cluster/local.sh starts it: the token in a
    600 file named by RAY_AUTH_TOKEN_PATH, the ladder user's MLflow credentials in its env."""
    token = secrets.token_hex(32)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(private_file(d / "ray-token", token)),
            "RAY_USAGE_STATS_ENABLED": "0"}
    head_env = {**os.environ, **auth, "MLFLOW_TRACKING_URI": mlflow.uri, **mlflow.client_env()}
    client_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "MLFLOW_TRACKING_"))},
                  **auth}
    for _attempt in range(2):
        dash = free_port()
        # Every per-node agent on its own port, as in conftest's ray_head: the session's other Ray has the defaults.
        ports = [f"--{flag}={free_port()}" for flag in (
            "port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
            "runtime-env-agent-port", "ray-client-server-port")]
        out = subprocess.run(
            [str(BIN / "ray"), "start", "--head", f"--dashboard-port={dash}", *ports, "--dashboard-host=127.0.0.1",
             "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true",
             "--object-store-memory=400000000", "--disable-usage-stats"],
            env=head_env, capture_output=True, text=True, timeout=300)
        if out.returncode == 0:
            return TokenHead(f"http://127.0.0.1:{dash}", temp_dir, token, client_env)
        # `ray start` gives its raylet a fixed 30 s to register, which a busy 2-core box can miss.
        _kill_ray_processes_under(temp_dir)
    raise RuntimeError(f"ray start --head failed twice: {out.stderr[-2000:]}")


@pytest.fixture(scope="module")
def services(tmp_path_factory, _aws_env):
    """A token-auth Ray head and a basic-auth MLflow server. MLflow starts once `ray start` has
    returned, so its start-up overlaps the job agent's and not the raylet's registration."""
    d = tmp_path_factory.mktemp("auth")
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    mlflow_proc = None
    try:
        mlflow = AuthMlflow(f"http://127.0.0.1:{free_port()}", "adm-" + secrets.token_hex(12),
                            "lad-" + secrets.token_hex(12))
        head = _start_head(d, mlflow, temp_dir)
        mlflow_proc, log = _start_mlflow(d, mlflow)
        _wait_http(f"{mlflow.uri}/health", mlflow_proc, log)
        _make_ladder_user(d, mlflow)
        deadline = time.time() + 300  # the job agent comes up after `ray start` returns
        while (probe := submit(head, "true", env=head.client_env, timeout=240)).returncode != 0:
            if time.time() > deadline:
                raise RuntimeError(f"the token head's job API never came up: {probe.stderr[-800:]}")
            time.sleep(3)
        yield mlflow, head
    finally:
        _kill_ray_processes_under(temp_dir)
        if mlflow_proc is not None:
            _stop_group(mlflow_proc)


@pytest.fixture(scope="module")
def auth_mlflow(services) -> AuthMlflow:
    return services[0]


@pytest.fixture(scope="module")
def token_head(services) -> TokenHead:
    return services[1]


def submit(head: TokenHead, *command: str, env: dict, timeout: float = 900, working_dir: bool = False):
    args = [str(BIN / "ray"), "job", "submit", "--address", head.dashboard]
    if working_dir:
        args += ["--working-dir", str(REPO)]
    return subprocess.run([*args, "--", *command], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_job_submit_without_the_token_is_refused(token_head):
    no_token = {k: v for k, v in token_head.client_env.items() if not k.startswith("RAY_AUTH")}
    wrong = {**token_head.client_env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # outranks the file
    for env in (no_token, wrong):
        out = submit(token_head, "echo", "ran-anyway", env=env, timeout=240)
        logs = out.stdout + out.stderr
        assert out.returncode != 0 and "ran-anyway" not in out.stdout, logs[-2000:]
        assert "401" in logs or "nauthorized" in logs or "uthentication" in logs, logs[-2000:]
    assert http_status(f"{token_head.dashboard}/api/jobs/") == 401


@pytest.mark.slow
def test_mlflow_answers_401_without_and_with_wrong_credentials(auth_mlflow):
    search = f"{auth_mlflow.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search) == 401
    assert http_status(search, LADDER_USER, "wrong-" + secrets.token_hex(8)) in (401, 403)
    assert http_status(search, "admin", "wrong-" + secrets.token_hex(8)) in (401, 403)
    assert http_status(search, LADDER_USER, auth_mlflow.password) == 200


@pytest.mark.slow
def test_wrong_mlflow_password_stops_the_ladder_before_anything_starts(tmp_path, s3, s3_corpus, auth_mlflow):
    wrong = "wrong-" + secrets.token_hex(12)
    config = ladder_config(tmp_path, s3, auth_mlflow.uri, "authwrong")
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}, **auth_mlflow.client_env(wrong)}
    out = subprocess.run([sys.executable, "experiments/ladder.py", "--config", str(config)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    logs = out.stdout + out.stderr
    assert out.returncode != 0
    assert auth_mlflow.uri in logs and "401" in logs, logs[-2000:]
    assert wrong not in logs and auth_mlflow.password not in logs
    # Nothing started: no Ray, no checkpoint folder, no experiment on the server.
    assert "Started a local Ray instance" not in logs
    assert not (tmp_path / "runs").exists()
    get = f"{auth_mlflow.uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=authwrong"
    assert http_status(get, "admin", auth_mlflow.admin_password) == 404


def ladder_config(tmp_path: Path, s3, uri: str, name: str) -> Path:
    """One rung of a few steps (tests/test_job_submit.py's micro ladder), tracked on `uri`."""
    path = micro_config(tmp_path, s3, s3.uri("corpus"), name, n_rungs=1)
    cfg = yaml.safe_load(path.read_text())
    cfg["tracking"]["uri"] = uri
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_with_the_token_a_micro_ladder_logs_its_runs_and_no_secret_leaks(tmp_path, s3, s3_corpus, auth_mlflow,
                                                                        token_head, monkeypatch):
    config = ladder_config(tmp_path, s3, auth_mlflow.uri, "authmicro")
    # The submitting shell has the token's path only: the MLflow credentials the ladder
    # uses come from the head's environment, where `ray start` ran.
    out = submit(token_head, sys.executable, "experiments/ladder.py", "--config", str(config),
                 env=token_head.client_env, working_dir=True)
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs[-3000:]
    assert "succeeded" in logs.lower()

    from mlflow.tracking import MlflowClient

    for var, value in auth_mlflow.client_env().items():
        monkeypatch.setenv(var, value)
    client = MlflowClient(auth_mlflow.uri)
    runs = client.search_runs([client.get_experiment_by_name("authmicro").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # parent + one rung

    hidden = (auth_mlflow.password, auth_mlflow.admin_password, token_head.token, FAKE_SECRET)
    for secret in hidden:
        assert secret not in logs  # stdout and the job's log, which `ray job submit` follows
    assert FAKE_KEY_ID not in logs
    for run in runs:
        blob = repr(run.data.params) + repr(run.data.tags)
        assert not any(s in blob for s in hidden)
        local = client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts" / run.info.run_id))
        assert_no_secret_in_tree(Path(local), hidden)
    assert_no_secret_in_tree(Path(token_head.temp_dir), hidden)  # Ray's job, worker and runtime-env logs
