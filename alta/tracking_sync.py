"""``alta tracking-sync``: replay a stage's local ``tracking.jsonl`` (kept during an MLflow outage) into a server.

Usage: ``alta tracking-sync results/align/tracking.jsonl --tracking-uri http://mlflow:5000 [--experiment alta]``.
Creates one new run holding the file's params, metrics (with their steps), tags and artifacts.
"""

from __future__ import annotations

import argparse
import os

from alta import tracking


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="alta tracking-sync", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", help="a tracking.jsonl written by a stage")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), required=False,
                    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    ap.add_argument("--experiment", default="alta")
    ap.add_argument("--credentials-file", default=None,
                    help="INI file with the server's login ([mlflow] mlflow_tracking_username/password); default: "
                         "MLFLOW_TRACKING_USERNAME/PASSWORD or ~/.mlflow/credentials")
    args = ap.parse_args(argv)
    if not args.tracking_uri:
        ap.error("--tracking-uri is required (or set MLFLOW_TRACKING_URI)")
    try:
        run_id = tracking.sync(args.jsonl, args.tracking_uri, args.experiment, args.credentials_file)
    except tracking.CredentialsError as exc:
        ap.error(str(exc))
    print(run_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
