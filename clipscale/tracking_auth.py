"""Fail fast when an MLflow tracking server will not take the ladder's credentials.

A server started with `mlflow server --app-name basic-auth` answers 401 to a request
without (or with wrong) credentials and 403 to a user without permission. Without this
check a ladder would generate data and start Ray before its first MLflow call failed;
with it, the ladder stops before anything starts, and the message names the tracking
URI and the user, never the password.

Credentials are MLflow's own: `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`
(or `MLFLOW_TRACKING_TOKEN`, or `~/.mlflow/credentials`), read here through MLflow's
`get_default_host_creds`, so the check sees exactly what the ladder's clients will send.
They reach Ray workers from the environment the workers run in (`ray start`'s), never
through the runtime env, which Ray records in its logs.
"""

from __future__ import annotations

from urllib.parse import urlparse

from clipscale.storage import StorageError

# Any endpoint the basic-auth app guards and every authenticated user may call: search
# only lists the experiments the user can read, so a user without grants still gets 200.
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"
CREDENTIAL_VARS = "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"


class TrackingAuthError(StorageError):
    """The tracking server refused the credentials, or the URI embeds them. The message
    names the URI (without any password) and the user, never the password."""


def redacted(uri: str) -> str:
    """The URI with any `user:password@` part reduced to the user."""
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    host = parsed.hostname or ""
    netloc = f"{parsed.username}:***@{host}" + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=netloc).geturl()


def check_tracking(uri: str, timeout_s: float = 30.0) -> None:
    """Raise TrackingAuthError unless an HTTP tracking server at `uri` accepts this
    process's MLflow credentials. Other URIs (sqlite, file, databricks) are not checked."""
    if not uri.startswith(("http://", "https://")):
        return
    if urlparse(uri).password is not None:
        # The tracking URI travels in the Ray runtime env and into logs and run metadata.
        raise TrackingAuthError(
            f"tracking URI {redacted(uri)} embeds a password; give the URI without it and the "
            f"credentials in {CREDENTIAL_VARS} where the ladder and its workers run")
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(creds, PROBE_ENDPOINT, "GET", params={"max_results": 1},
                                max_retries=0, timeout=timeout_s)
    except MlflowException:
        # Unreachable is not refused: the tracking client's own retries (tracking.retry_seconds)
        # decide how long to wait out a server that is down or restarting.
        return
    _raise_for_status(uri, response.status_code, creds.username, bool(creds.token))


def _raise_for_status(uri: str, status: int, username: str | None, has_token: bool) -> None:
    who = f"user {username!r}" if username else ("a bearer token" if has_token else "no credentials")
    if status == 401:
        hint = "wrong username or password" if username or has_token else f"set {CREDENTIAL_VARS}"
        raise TrackingAuthError(
            f"MLflow tracking server {uri} answered HTTP 401 to {who} ({hint}); the ladder and its Ray "
            f"workers take {CREDENTIAL_VARS} from the environment they run in")
    if status == 403:
        raise TrackingAuthError(
            f"MLflow tracking server {uri} answered HTTP 403 to {who}: ask its admin for access")
    if status >= 400:
        raise TrackingAuthError(f"MLflow tracking server {uri} answered HTTP {status} to {PROBE_ENDPOINT}")
