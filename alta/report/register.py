"""Stage `register_model`: the aligned checkpoint as an MLflow model, logged and registered in the Model Registry.

``python -m alta.report.register --checkpoint results/align/checkpoint.pt --tokenizer results/align/tokenizer
--name alta-demo --out results/register``

Writes ``<out>/model/`` (the MLflow pyfunc model folder, usable offline: ``alta embed --model results/register/model``)
and ``<out>/registered_model.json`` (``name``, ``version``, ``uri`` = ``models:/NAME/VERSION``, ``run_id``,
``embedding_dim``, ``checkpoint_sha256``). The model folder is logged as the artifact ``model`` of this stage's
child run and a new version of ``--name`` is created from it, one per align checkpoint the workflow produces.
During a tracking outage the model is still saved locally, ``version`` is null, and the stage succeeds with a
warning (register it later by rerunning the stage).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from alta import io, tracking
from alta.report import mlflow_model as MM

log = logging.getLogger("alta.report.register")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="alta register_model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="align checkpoint.pt")
    ap.add_argument("--tokenizer", required=True, help="the tokenizer directory saved beside it")
    ap.add_argument("--name", required=True, help="registered model name")
    ap.add_argument("--out", required=True, help="output folder")
    args = ap.parse_args(argv)
    out = Path(args.out)
    sha = io.sha256_file(args.checkpoint)
    params = {"checkpoint": str(args.checkpoint), "tokenizer": str(args.tokenizer), "name": args.name}
    with tracking.stage_run("register_model", params, out) as run:
        info = MM.save_model(args.checkpoint, args.tokenizer, out / "model")
        record = {"name": args.name, "version": None, "uri": None, "run_id": run.run_id,
                  "checkpoint_sha256": sha, **info}
        run.set_tags({"alta.checkpoint_sha256": sha})
        if run._client is not None:
            try:
                run._client.log_artifacts(run.run_id, str(out / "model"), "model")
                mv = MM.register(run._client, run.run_id, "model", args.name,
                                 tags={"alta.checkpoint_sha256": sha, "alta.preset": info["preset"]})
                record.update(version=int(mv.version), uri=f"models:/{args.name}/{mv.version}")
                run.set_tags({"alta.registered_model": record["uri"]})
            except Exception as exc:  # noqa: BLE001 - an outage must not fail the workflow
                log.warning("could not log or register the model (%s); it is saved in %s", exc, out / "model")
        else:
            log.warning("MLflow tracking unavailable: the model is saved in %s but not registered", out / "model")
    io.write_json(out / "registered_model.json", record)
    print(record["uri"] or out / "model")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
