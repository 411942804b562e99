# Model half: tokenizer -> MRM pretraining (skipped when mrm.weights names an existing MRM.pth) -> ALTA alignment.
# Training rules launch torchrun --standalone --nproc_per_node=N; the same command works under srun on Slurm.

import shlex


def tokenizer_dir(wildcards=None):
    return config["tokenizer"]["path"] or f"{RES}/tokenizer"


def tokenizer_input(wildcards):
    return [] if config["tokenizer"]["path"] else [f"{RES}/tokenizer/tokenizer.json"]


def mrm_weights(wildcards):
    return config["mrm"]["weights"] or f"{RES}/mrm/checkpoint.pt"


def torchrun(stage):
    n = config[stage].get("nproc", 1)
    return f"{PY} -m torch.distributed.run --standalone --nproc_per_node={n} -m alta.{stage}"


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
        tokenizer=tokenizer_input,
    output:
        ckpt=f"{RES}/mrm/checkpoint.pt",
    params:
        cfg=lambda w: shlex.quote(section("mrm")),
        tok=tokenizer_dir,
        seed=config["seed"],
    threads: config["mrm"].get("threads", 2)
    log:
        "logs/mrm/mrm.log",
    benchmark:
        "logs/mrm/mrm.bench.tsv"
    resources:
        runtime=2880,
        mem_mb=32000,
    shell:
        "OMP_NUM_THREADS={threads} " + torchrun("mrm") + " --pairs {input.pairs} --images {input.images}"
        " --extract-dir {RES}/extract --tokenizer {params.tok} --out {RES}/mrm --seed {params.seed}"
        " --config-json {params.cfg} > {log} 2>&1"


rule align:
    input:
        pairs=rules.pair.output.pairs,
        images=rules.extract_merge.output.images,
        tokenizer=tokenizer_input,
        mrm=mrm_weights,
    output:
        ckpt=f"{RES}/align/checkpoint.pt",
    params:
        cfg=lambda w: shlex.quote(section("align")),
        tok=tokenizer_dir,
        text_dir=opt("--text-dir", config["align"].get("text_dir")),
        seed=config["seed"],
    threads: config["align"].get("threads", 2)
    log:
        "logs/align/align.log",
    benchmark:
        "logs/align/align.bench.tsv"
    resources:
        runtime=2880,
        mem_mb=32000,
    shell:
        "OMP_NUM_THREADS={threads} " + torchrun("align") + " --pairs {input.pairs} --images {input.images}"
        " --extract-dir {RES}/extract --tokenizer {params.tok} --mrm-weights {input.mrm} {params.text_dir}"
        " --out {RES}/align --seed {params.seed} --config-json {params.cfg} > {log} 2>&1"
