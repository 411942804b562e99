# Model half: tokenizer -> MRM pretraining (skipped when mrm.weights names an existing MRM.pth) -> ALTA alignment.
# Training rules launch torchrun --standalone --nproc_per_node=N: N = the job's `gpu` resource when it has GPUs
# (set per rule in profiles/slurm), else the stage's `nproc` (CPU processes with gloo); with `tasks_per_node` > 0
# (multi-node, profile only) srun starts nodes x tasks_per_node ranks instead (common.smk, torchrun()).
# Preempted or killed jobs exit non-zero after saving last.pt; Snakemake's retries rerun them and training resumes.


rule tokenizer:
    input:
        pairs=rules.pair.output.pairs,
    output:
        f"{RES}/tokenizer/tokenizer.json",
    log:
        "logs/tokenizer/tokenizer.log",
    conda:
        "../../envs/alta.yaml"
    resources:
        runtime=30,
        mem_mb=4000,
    params:
        py=PY,
        outdir=lambda w, output: str(Path(output[0]).parent),
        cfg=lambda w: section("tokenizer"),
    shell:
        "{params.py} -m alta.train.tokenizer --texts {input.pairs} --out {params.outdir} --config-json {params.cfg} > {log} 2>&1"


rule text_pretrain:
    input:
        pairs=rules.pair.output.pairs,
        tokenizer=tokenizer_input,
    output:
        config=f"{RES}/text_pretrain/model/config.json",
        ckpt=f"{RES}/text_pretrain/checkpoint.pt",
        curve=report(
            f"{RES}/text_pretrain/loss_curve.png",
            caption="../report/curves.rst",
            category="2. Training",
            subcategory="text_pretrain",
        ),
    log:
        "logs/text_pretrain/text_pretrain.log",
    benchmark:
        "logs/text_pretrain/text_pretrain.bench.tsv"
    conda:
        "../../envs/alta.yaml"
    threads: config.get("text_pretrain", {}).get("threads", 2)
    resources:
        runtime=runtime_by_attempt(240),
        mem_mb=8000,
    params:
        py=PY,
        outdir=lambda w, output: str(Path(output.ckpt).parent),
        cfg=lambda w: trainer_config("text_pretrain"),
        tok=tokenizer_dir,
    shell:
        "OMP_NUM_THREADS={threads} {params.py} -m alta.train.text_pretrain --pairs {input.pairs}"
        " --tokenizer {params.tok} --out {params.outdir} --config-json {params.cfg} > {log} 2>&1"


rule mrm:
    input:
        pairs=rules.pair.output.pairs,
        images=rules.extract_merge.output.images,
        sections=rules.sections.output.sections,
        tokenizer=tokenizer_input,
    output:
        ckpt=f"{RES}/mrm/checkpoint.pt",
        curve=report(
            f"{RES}/mrm/loss_curve.png",
            caption="../report/curves.rst",
            category="2. Training",
            subcategory="mrm",
        ),
    log:
        "logs/mrm/mrm.log",
    benchmark:
        "logs/mrm/mrm.bench.tsv"
    conda:
        "../../envs/alta.yaml"
    threads: config["mrm"].get("threads", 2)
    resources:
        gpu=config["mrm"].get("gpus", 0),
        nodes=1,
        tasks_per_node=0,
        runtime=runtime_by_attempt(2880),
        mem_mb=32000,
    params:
        outdir=lambda w, output: str(Path(output.ckpt).parent),
        extract=lambda w, input: str(Path(input.images).parent),
        cfg=lambda w: trainer_config("mrm"),
        tok=tokenizer_dir,
        seed=config["seed"],
    shell:
        torchrun("mrm")
        + " --pairs {input.pairs} --images {input.images} --sections {input.sections}"
        " --extract-dir {params.extract} --tokenizer {params.tok} --out {params.outdir}"
        " --config-json {params.cfg} >> {log} 2>&1"


# align.seeds: one model per seed as separate jobs. One seed (the default) keeps results/align/; several write
# results/align/seed<N>/ (logs/align/align.seed<N>.log) and evaluate scores each and their mean ± sd.
ALIGN_OUT = f"{RES}/align" if len(align_seeds()) == 1 else f"{RES}/align/seed{{seed}}"
ALIGN_TAG = "" if len(align_seeds()) == 1 else ".seed{seed}"


rule align:
    input:
        pairs=rules.pair.output.pairs,
        images=rules.extract_merge.output.images,
        tokenizer=tokenizer_input,
        mrm=mrm_weights,
        text=text_dir_input,
    output:
        ckpt=f"{ALIGN_OUT}/checkpoint.pt",
        best=f"{ALIGN_OUT}/best.pt",
        curve=report(
            f"{ALIGN_OUT}/loss_curve.png",
            caption="../report/curves.rst",
            category="2. Training",
            subcategory="align",
        ),
    log:
        f"logs/align/align{ALIGN_TAG}.log",
    benchmark:
        f"logs/align/align{ALIGN_TAG}.bench.tsv"
    wildcard_constraints:
        seed=r"\d+",
    conda:
        "../../envs/alta.yaml"
    threads: config["align"].get("threads", 2)
    resources:
        gpu=config["align"].get("gpus", 0),
        nodes=1,
        tasks_per_node=0,
        runtime=runtime_by_attempt(2880),
        mem_mb=32000,
    params:
        outdir=lambda w, output: str(Path(output.ckpt).parent),
        extract=lambda w, input: str(Path(input.images).parent),
        cfg=lambda w: trainer_config("align"),
        tok=tokenizer_dir,
        text_dir=lambda w: opt("--text-dir", text_dir()),
        trust=trust_flag("mrm", "trust_weights"),
        seed=align_seed,
    shell:
        torchrun("align") + " --pairs {input.pairs} --images {input.images}"
        " --extract-dir {params.extract} --tokenizer {params.tok} --mrm-weights {input.mrm} {params.text_dir} {params.trust}"
        " --seed {params.seed}"
        " --out {params.outdir} --config-json {params.cfg} >> {log} 2>&1"
