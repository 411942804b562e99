# Model half: tokenizer -> MRM pretraining (skipped when mrm.weights names an existing MRM.pth) -> ALTA alignment.
# Training rules launch torchrun --standalone --nproc_per_node=N: N = the job's `gpu` resource when it has GPUs
# (set per rule in profiles/slurm), else the stage's `nproc` (CPU processes with gloo).
# Preempted or killed jobs exit non-zero after saving last.pt; Snakemake's retries rerun them and training resumes.

import shlex

# Keys of a training section that configure the workflow, not the trainer.
WORKFLOW_KEYS = {"weights", "nproc", "gpus", "threads", "text_dir"}


def trainer_config(stage):
    """The stage's trainer settings as shell-quoted JSON (the workflow seed unless the section sets its own)."""
    cfg = {k: v for k, v in config[stage].items() if k not in WORKFLOW_KEYS}
    cfg.setdefault("seed", config["seed"])
    return shlex.quote(json.dumps(cfg, sort_keys=True))


def tokenizer_dir(wildcards=None):
    return config["tokenizer"]["path"] or f"{RES}/tokenizer"


def tokenizer_input(wildcards):
    return [] if config["tokenizer"]["path"] else [f"{RES}/tokenizer/tokenizer.json"]


def mrm_weights(wildcards):
    return config["mrm"]["weights"] or f"{RES}/mrm/checkpoint.pt"


def torchrun(stage):
    """torchrun with one process per GPU of the job, or config[stage].nproc CPU processes."""
    nproc = config[stage].get("nproc", 1)
    return (
        f'NPROC=$(( {{resources.gpu}} > 0 ? {{resources.gpu}} : {nproc} )); OMP_NUM_THREADS={{threads}} '
        f"{PY} -m torch.distributed.run --standalone --nproc_per_node=$NPROC -m alta.{stage}"
    )


def runtime_by_attempt(minutes):
    """Retries (e.g. after a timeout or preemption) get proportionally more wall time."""
    return lambda wildcards, attempt: minutes * attempt


rule tokenizer:
    input:
        pairs=rules.pair.output.pairs,
    output:
        f"{RES}/tokenizer/tokenizer.json",
    params:
        cfg=lambda w: section("tokenizer"),
        vocab=config["tokenizer"].get("vocab_size", 2000),
    log:
        "logs/tokenizer/tokenizer.log",
    resources:
        runtime=30,
        mem_mb=4000,
    shell:
        "{PY} -m alta.tokenizer --texts {input.pairs} --out {RES}/tokenizer --vocab-size {params.vocab} > {log} 2>&1"


rule mrm:
    input:
        pairs=rules.pair.output.pairs,
        images=rules.extract_merge.output.images,
        sections=rules.sections.output.sections,
        tokenizer=tokenizer_input,
    output:
        ckpt=f"{RES}/mrm/checkpoint.pt",
    params:
        cfg=lambda w: trainer_config("mrm"),
        tok=tokenizer_dir,
        seed=config["seed"],
    threads: config["mrm"].get("threads", 2)
    log:
        "logs/mrm/mrm.log",
    benchmark:
        "logs/mrm/mrm.bench.tsv"
    resources:
        gpu=config["mrm"].get("gpus", 0),
        runtime=runtime_by_attempt(2880),
        mem_mb=32000,
    shell:
        torchrun("mrm") + " --pairs {input.pairs} --images {input.images} --sections {input.sections}"
        " --extract-dir {RES}/extract --tokenizer {params.tok} --out {RES}/mrm"
        " --config-json {params.cfg} >> {log} 2>&1"


rule align:
    input:
        pairs=rules.pair.output.pairs,
        images=rules.extract_merge.output.images,
        tokenizer=tokenizer_input,
        mrm=mrm_weights,
    output:
        ckpt=f"{RES}/align/checkpoint.pt",
        best=f"{RES}/align/best.pt",
    params:
        cfg=lambda w: trainer_config("align"),
        tok=tokenizer_dir,
        text_dir=opt("--text-dir", config["align"].get("text_dir")),
    threads: config["align"].get("threads", 2)
    log:
        "logs/align/align.log",
    benchmark:
        "logs/align/align.bench.tsv"
    resources:
        gpu=config["align"].get("gpus", 0),
        runtime=runtime_by_attempt(2880),
        mem_mb=32000,
    shell:
        torchrun("align") + " --pairs {input.pairs} --images {input.images}"
        " --extract-dir {RES}/extract --tokenizer {params.tok} --mrm-weights {input.mrm} {params.text_dir}"
        " --out {RES}/align --config-json {params.cfg} >> {log} 2>&1"
