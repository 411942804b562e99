# Benchmarks: CheXpert 5x200, CheXpert 8x200 (ConVIRT), RSNA zero-shot, held-out instance retrieval.
# One metrics/<model>/<benchmark>.json per model and benchmark, a comparison table and plots (alta.evaluate).


def eval_checkpoints(wildcards):
    models = config["evaluate"]["models"]
    out = {}
    if "mrm" in models:
        out["mrm"] = mrm_weights(wildcards)
    if "align" in models:
        out["align"] = rules.align.output.ckpt
    if "official" in models:
        out["official"] = config["evaluate"]["official_alta"]
    return out


def eval_model_args(wildcards, input):
    return " ".join(f"--model {name}={input[name]}" for name in config["evaluate"]["models"])


rule evaluate:
    input:
        unpack(eval_checkpoints),
        pairs=rules.pair.output.pairs,
        images=rules.extract_merge.output.images,
        tokenizer=tokenizer_input,
    output:
        report=f"{RES}/evaluate/report.md",
        table=f"{RES}/evaluate/comparison.csv",
    params:
        cfg=lambda w: shlex.quote(section("evaluate")),
        models=eval_model_args,
        tok=tokenizer_dir,
        text_dir=opt("--text-dir", config["align"].get("text_dir")),
    threads: 2
    log:
        "logs/evaluate/evaluate.log",
    benchmark:
        "logs/evaluate/evaluate.bench.tsv"
    resources:
        runtime=240,
        mem_mb=16000,
    shell:
        "{PY} -m alta.evaluate.run {params.models} --pairs {input.pairs} --images {input.images}"
        " --extract-dir {RES}/extract --tokenizer {params.tok} {params.text_dir} --out {RES}/evaluate"
        " --config-json {params.cfg} > {log} 2>&1"
