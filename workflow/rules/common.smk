# Shared wiring: paths, the Python that runs every stage, input functions and MLflow parent-run hooks.
# No pipeline logic lives here: the input functions ask the `alta` modules which files belong to a stage.

import json
from pathlib import Path

from alta import tracking

PY = sys.executable  # the interpreter running Snakemake, so stages use the same environment
RES = config["results"]
DATA = config["data"]
ROOT = DATA["root"]

# Stages read the MLflow parent run from this file (written in onstart); jobs inherit the variable,
# also through sbatch's default --export=ALL on Slurm.
TRACKING_CONTEXT = os.path.abspath(f"{RES}/mlflow/context.json")
os.environ[tracking.CONTEXT_ENV] = TRACKING_CONTEXT


def section(name):
    """A config section as a canonical JSON string: the rule's params, so a changed section reruns the stage."""
    return json.dumps(config[name], sort_keys=True)


def start_tracking(cfg):
    tracking.start_parent(
        TRACKING_CONTEXT,
        cfg["mlflow"]["tracking_uri"],
        cfg["mlflow"]["experiment"],
        run_name="snakemake " + " ".join(sys.argv[1:])[:200],
        params={k: cfg[k] for k in cfg if k != "mlflow"},
    )


def end_tracking(status):
    tracking.end_parent(TRACKING_CONTEXT, status)


def _data_ready():
    """Block input functions until the demo dataset exists (it is a checkpoint when demo.enabled)."""
    if config["demo"]["enabled"]:
        checkpoints.demo_data.get()


def _metadata_csv():
    if DATA.get("metadata_csv"):
        return DATA["metadata_csv"]
    cand = Path(ROOT or ".") / "mimic-cxr-2.0.0-metadata.csv.gz"
    return str(cand) if (config["demo"]["enabled"] or cand.exists()) and DATA["source"] != "manifest" else None


def _split_csv():
    if DATA.get("split_csv"):
        return DATA["split_csv"]
    cand = Path(ROOT or ".") / "mimic-cxr-2.0.0-split.csv.gz"
    return str(cand) if (config["demo"]["enabled"] or cand.exists()) and DATA["source"] != "manifest" else None


def shard_names(wildcards=None):
    from alta import extract

    _data_ready()
    return extract.list_shards(DATA["source"], ROOT, manifest=DATA.get("manifest"),
                               n_shards=config["extract"]["n_shards"])


def shard_input_files(wildcards):
    from alta import extract

    _data_ready()
    files = extract.shard_files(DATA["source"], ROOT, wildcards.shard, manifest=DATA.get("manifest"),
                                n_shards=config["extract"]["n_shards"])
    if DATA["source"] == "manifest":
        # Missing manifest paths become rejects inside the stage, not DAG errors.
        files = [f for f in files if os.path.exists(f)] + [DATA["manifest"]]
    elif DATA["source"] == "mimic_jpg" and _metadata_csv():
        files = files + [_metadata_csv()]
    return files


def report_files(wildcards):
    from alta import sections

    _data_ready()
    source = "manifest" if DATA["source"] == "manifest" else "mimic"
    files = sections.list_report_files(source, ROOT, manifest=DATA.get("manifest"))
    return files + ([DATA["manifest"]] if source == "manifest" else [])


def split_csv_input(wildcards):
    _data_ready()
    p = _split_csv()
    return [p] if p else []


def opt(flag, value):
    """Render an optional CLI flag; nothing when the value is null."""
    return "" if value is None else f"{flag} {value}"
