# Benchmarks: CheXpert 5x200, CheXpert 8x200 (ConVIRT), RSNA zero-shot, held-out instance retrieval.
# One metrics/<model>/<benchmark>.json per model and benchmark, a comparison table and plots (alta.evaluate).


rule evaluate:
    input:
        unpack(eval_checkpoints),
        pairs=rules.pair.output.pairs,
        images=rules.extract_merge.output.images,
        tokenizer=tokenizer_input,
        text=text_dir_input,
    output:
        report=report(
            f"{RES}/evaluate/report.md",
            caption="../report/evaluation.rst",
            category="3. Evaluation",
            subcategory="Tables",
        ),
        table=report(
            f"{RES}/evaluate/comparison.csv",
            caption="../report/evaluation.rst",
            category="3. Evaluation",
            subcategory="Tables",
        ),
        plots=report(
            directory(f"{RES}/evaluate/plots"),
            patterns=["{name}.png"],
            caption="../report/evaluation.rst",
            category="3. Evaluation",
            subcategory="Plots",
        ),
    log:
        "logs/evaluate/evaluate.log",
    benchmark:
        "logs/evaluate/evaluate.bench.tsv"
    conda:
        "../../envs/alta.yaml"
    threads: config["evaluate"].get("threads", 2)
    resources:
        runtime=240,
        mem_mb=16000,
    params:
        py=PY,
        outdir=lambda w, output: str(Path(output.report).parent),
        extract=lambda w, input: str(Path(input.images).parent),
        cfg=lambda w: section("evaluate", job_keys=("threads",)),
        models=eval_model_args,
        tok=tokenizer_dir,
        text_dir=lambda w: opt("--text-dir", text_dir()),
        mrm_options=align_model_options,
    shell:
        "{params.py} -m alta.evaluate.run {params.models} --pairs {input.pairs} --images {input.images}"
        " --extract-dir {params.extract} --tokenizer {params.tok} {params.text_dir} --out {params.outdir}"
        " {params.mrm_options}"
        " --config-json {params.cfg} > {log} 2>&1"
