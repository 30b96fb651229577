#!/usr/bin/env python
"""Create (or re-password) the ladder's non-admin MLflow user on a basic-auth server.

Run as the admin, with MLflow's own client variables, the password read from a file
(mode 600) so that it never appears in `ps` or a shell history:

    MLFLOW_TRACKING_URI=http://mlflow.internal:5000 \
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$(cat admin-password)" \
        python cluster/mlflow/ensure_user.py --user clipscale --password-file ladder-password \
        [--grant-existing EDIT]

The user owns the experiments it creates (MLflow grants their creator MANAGE). Experiments
that already exist (e.g. an `mlflow.db` written by `make run` before the server had auth)
belong to nobody, so the ladder user can only READ them: `--grant-existing EDIT` grants it
EDIT on each of those. Idempotent: run it at every start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXPERIMENT = "experiment"


def read_password(path: Path) -> str:
    if not path.is_file():
        raise SystemExit(f"ensure_user.py: password file {path} does not exist")
    if path.stat().st_mode & 0o077:
        raise SystemExit(f"ensure_user.py: {path} is readable by others: chmod 600 {path}")
    value = path.read_text().strip()
    if len(value) < 12:  # MLflow's own minimum; say so before the server does
        raise SystemExit(f"ensure_user.py: the password in {path} is shorter than MLflow's 12 characters")
    return value


def ensure_user(client, username: str, login: str) -> str:
    """Create the user with the password `login`, or set it if the user exists already."""
    from mlflow.exceptions import RestException

    try:
        client.get_user(username)
    except RestException as e:
        if e.get_http_status_code() != 404:
            raise
        client.create_user(username, login)
        return "created"
    client.update_user_password(username, login)
    return "password set"


def grant_existing(client, uri: str, username: str, permission: str) -> int:
    """Grant `permission` on every experiment that exists now; returns how many were new."""
    from mlflow.exceptions import RestException
    from mlflow.tracking import MlflowClient

    granted = 0
    for exp in MlflowClient(uri).search_experiments(max_results=50_000):
        try:
            client.grant_user_permission(username, EXPERIMENT, exp.experiment_id, permission)
            granted += 1
        except RestException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    return granted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", required=True, help="the ladder's (non-admin) username")
    parser.add_argument("--password-file", required=True, type=Path, help="file (mode 600) holding its password")
    parser.add_argument("--grant-existing", choices=["READ", "EDIT", "MANAGE"], default=None,
                        help="also grant this permission on every experiment that exists now")
    args = parser.parse_args(argv)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        raise SystemExit("ensure_user.py: set MLFLOW_TRACKING_URI to the server's http(s) address")
    if not os.environ.get("MLFLOW_TRACKING_USERNAME") or not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        raise SystemExit("ensure_user.py: set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD to the admin's")
    from mlflow.server.auth.client import AuthServiceClient

    client = AuthServiceClient(uri)
    what = ensure_user(client, args.user, read_password(args.password_file))
    line = f"mlflow: user {args.user!r} {what}"
    if args.grant_existing:
        n = grant_existing(client, uri, args.user, args.grant_existing)
        line += f"; {args.grant_existing} on {n} more existing experiment(s)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
