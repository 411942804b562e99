# Shared wiring: paths, the Python that runs every stage, input functions and MLflow parent-run hooks.
# No pipeline logic lives here: the input functions ask the `alta` modules which files belong to a stage.

import json
import shlex
import threading
from pathlib import Path

from alta import tracking

PY = (
    sys.executable
)  # the interpreter running Snakemake, so stages use the same environment
RES = config["results"]
DATA = config["data"]
ROOT = DATA["root"]

# Stages read the MLflow parent run from this file (written in onstart); jobs inherit the variable,
# also through sbatch's default --export=ALL on Slurm.
TRACKING_CONTEXT = os.path.abspath(f"{RES}/mlflow/context.json")
os.environ[tracking.CONTEXT_ENV] = TRACKING_CONTEXT

# Ctrl-C stops running jobs within seconds (training saves last.pt first); alta/interrupts.py says why it is needed.
if threading.current_thread() is threading.main_thread():
    from alta import interrupts

    interrupts.forward_interrupt()


def section(name, job_keys=()):
    """A config section as canonical, shell-quoted JSON: every rule's ``cfg`` param (so a changed section reruns the
    stage) and its command's ``--config-json`` (each key is the stage's option of the same name). ``job_keys``
    configure the job (``threads``), not the stage, and are left out.
    """
    cfg = {k: v for k, v in config[name].items() if k not in job_keys}
    return shlex.quote(json.dumps(cfg, sort_keys=True))


def start_tracking(cfg):
    tracking.start_parent(
        TRACKING_CONTEXT,
        cfg["mlflow"]["tracking_uri"],
        cfg["mlflow"]["experiment"],
        run_name="snakemake " + " ".join(sys.argv[1:])[:200],
        params={k: cfg[k] for k in cfg if k != "mlflow"},
        credentials_file=cfg["mlflow"].get("credentials_file"),
        artifacts=tracking.provenance_files(cfg),
    )


def end_tracking(status):
    tracking.end_parent(TRACKING_CONTEXT, status)


def _data_ready():
    """Block input functions until the demo dataset exists (it is a checkpoint when demo.enabled)."""
    if config["demo"]["enabled"]:
        checkpoints.demo_data.get()


def _mimic_table(key, name):
    """The configured data.<key>, else <root>/<name> when the input is a MIMIC tree that has it (the demo's will)."""
    if DATA.get(key):
        return DATA[key]
    cand = Path(ROOT or ".") / name
    if DATA["source"] == "manifest" or not (config["demo"]["enabled"] or cand.exists()):
        return None
    return str(cand)


def _metadata_csv():
    return _mimic_table("metadata_csv", "mimic-cxr-2.0.0-metadata.csv.gz")


def _split_csv():
    return _mimic_table("split_csv", "mimic-cxr-2.0.0-split.csv.gz")


def shard_names(wildcards=None):
    from alta.data import inputs

    _data_ready()
    return inputs.list_shards(
        DATA["source"],
        ROOT,
        manifest=DATA.get("manifest"),
        n_shards=config["extract"]["n_shards"],
    )


def shard_input_files(wildcards):
    from alta.data import inputs

    _data_ready()
    files = inputs.shard_files(
        DATA["source"],
        ROOT,
        wildcards.shard,
        manifest=DATA.get("manifest"),
        n_shards=config["extract"]["n_shards"],
    )
    if DATA["source"] == "manifest":
        # Missing manifest paths become rejects inside the stage, not DAG errors. The manifest itself is not an
        # input: a shard depends on its rows' image columns only (shard_digest), so a report edit does not
        # re-extract.
        files = [f for f in files if os.path.exists(f)]
    elif DATA["source"] == "mimic_jpg" and _metadata_csv():
        files = files + [_metadata_csv()]
    return files


def shard_digest(wildcards):
    """The digest of a manifest shard's image columns (a param: it changes only when what the shard extracts does)."""
    if DATA["source"] != "manifest":
        return ""
    from alta.data import inputs as extract_inputs

    return extract_inputs.manifest_shard_digest(
        DATA["manifest"], wildcards.shard, config["extract"]["n_shards"]
    )


def report_files(wildcards):
    from alta.data import sections

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


# ---- used by train.smk ----
def align_seeds():
    """align.seeds: one align job per seed (default: the align section's seed, else the workflow seed)."""
    seeds = config["align"].get("seeds")
    return list(seeds) if seeds else [config["align"].get("seed", config["seed"])]


def align_seed(wildcards):
    """The seed of one align job: its {seed} wildcard with several seeds, else the only one."""
    return wildcards.get("seed", align_seeds()[0])


def trainer_config(stage):
    """The stage's effective trainer settings (recipe + config, resolved in the Snakefile) and the recipe's name,
    as shell-quoted JSON; the workflow seed unless the section sets its own."""
    from alta.recipes import WORKFLOW_KEYS

    cfg = {k: v for k, v in config[stage].items() if k not in WORKFLOW_KEYS}
    cfg.setdefault("seed", config["seed"])
    cfg["recipe"] = config["recipe"]
    return shlex.quote(json.dumps(cfg, sort_keys=True))


def trust_flag(stage, key):
    """``--trust-checkpoint`` when the user marked that stage's weight file as trusted (default: weights only)."""
    return "--trust-checkpoint" if config[stage].get(key) else ""


def tokenizer_dir(wildcards=None):
    return config["tokenizer"]["path"] or f"{RES}/tokenizer"


def tokenizer_input(wildcards):
    return [] if config["tokenizer"]["path"] else [f"{RES}/tokenizer/tokenizer.json"]


def mrm_weights(wildcards):
    return config["mrm"]["weights"] or f"{RES}/mrm/checkpoint.pt"


def text_dir(wildcards=None):
    """The text encoder directory align/evaluate load: the user's CXR-BERT (align.text_dir), else the
    text_pretrain stand-in when enabled, else None (a random preset-sized BERT)."""
    if config["align"].get("text_dir"):
        return config["align"]["text_dir"]
    if config.get("text_pretrain", {}).get("enabled", False):
        return f"{RES}/text_pretrain/model"
    return None


def text_dir_input(wildcards):
    """The stand-in's config.json when align/evaluate use it, so they rerun after text_pretrain (a user's
    align.text_dir is a fixed input, not a workflow output)."""
    if config["align"].get("text_dir") or text_dir() is None:
        return []
    return [f"{text_dir()}/config.json"]


def torchrun(stage):
    """The launcher of a training stage: one process per GPU of the job, or config[stage].nproc CPU processes.

    * Default (``tasks_per_node`` resource 0): ``torchrun --standalone --nproc_per_node=<gpu or nproc>`` on one node.
    * Slurm tasks (``tasks_per_node`` > 0, set in the profile with ``mpi: srun`` and ``nodes``): ``srun`` starts
      ``nodes x tasks_per_node`` ranks across the allocation, one per GPU (``gres: gpu:<tasks_per_node>``) or CPU
      process; alta.train.distributed takes rank, world size and local rank from SLURM_* and rank 0's address from the
      step's node list. ``mpi`` makes the job step plugin run this command in the batch step instead of inside a
      one-task ``srun``, so the inner ``srun`` gets the whole allocation; without it the command refuses to start.

    ``exec`` replaces the job's shell by the launcher, so a SIGTERM (Slurm preemption) reaches torchrun or srun,
    which pass it to the workers and wait while they save ``last.pt``, instead of the shell dying first.
    """
    nproc = config[stage].get("nproc", 1)
    return (
        f"if [ {{resources.tasks_per_node}} -gt 0 ]; then "
        f'if [ -n "${{{{SLURM_STEP_ID:-}}}}" ]; then echo "{stage}: tasks_per_node needs mpi: srun in the'
        f' profile (the job would start srun inside a one-task step)" >&2; exit 2; fi; '
        f"LAUNCH=(srun --nodes={{resources.nodes}} --ntasks-per-node={{resources.tasks_per_node}}"
        f" --cpus-per-task={{threads}} --kill-on-bad-exit=1 {PY}); "
        f"else NPROC=$(( {{resources.gpu}} > 0 ? {{resources.gpu}} : {nproc} )); "
        f"LAUNCH=({PY} -m torch.distributed.run --standalone --nproc_per_node=$NPROC); fi; "
        f'OMP_NUM_THREADS={{threads}} exec "${{{{LAUNCH[@]}}}}" -m alta.train.{stage}'
    )


def runtime_by_attempt(minutes):
    """Retries (e.g. after a timeout or preemption) get proportionally more wall time."""
    return lambda wildcards, attempt: minutes * attempt


# ---- used by evaluate.smk ----
def eval_checkpoints(wildcards):
    models = config["evaluate"]["models"]
    out = {}
    if "mrm" in models:
        out["mrm"] = mrm_weights(wildcards)
    seeds = align_seeds()
    if "align" in models and len(seeds) == 1:
        out["align"] = rules.align.output.ckpt
    elif "align" in models:  # one per seed: results/align/seed<N>/checkpoint.pt
        for s in seeds:
            out[f"align_seed{s}"] = expand(rules.align.output.ckpt, seed=s)[0]
    if "official" in models:
        out["official"] = config["evaluate"]["official_alta"]
    return out


def align_model_options(wildcards):
    """The align section's ALTA options, preset and overrides as evaluate's flags: the MRM baseline is built as the
    aligned model's architecture (a released MRM.pth records no preset)."""
    options = json.dumps(config["align"].get("model_options") or {}, sort_keys=True)
    overrides = json.dumps(config["align"].get("model_overrides") or {}, sort_keys=True)
    return (
        f"--mrm-options {shlex.quote(options)} --mrm-preset {config['align']['preset']}"
        f" --mrm-overrides {shlex.quote(overrides)}"
    )


def eval_model_args(wildcards, input):
    """--model NAME=CKPT per model; the seeds of align as --model align@SEED=CKPT (reported as mean ± sd)."""
    trusted = {
        "mrm": config["mrm"].get("trust_weights"),
        "official": config["evaluate"].get("trust_official_alta"),
    }
    models = []
    for name in config["evaluate"]["models"]:
        if name == "align" and len(align_seeds()) > 1:
            for s in align_seeds():
                models.append(f"--model align@{s}={input[f'align_seed{s}']}")
        else:
            models.append(f"--model {name}={input[name]}")
    return " ".join(
        models + [f"--trust {name}" for name, yes in trusted.items() if yes]
    )
