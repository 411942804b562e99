# The MLflow model and the Snakemake report: `register_model` logs the aligned checkpoint as an MLflow pyfunc model
# and registers a version of mlflow.registered_model; `report_tables` writes the data tables of
# `snakemake --report report.html` (categories are numbered in the order a reader browses them).


localrules:
    report_tables,


rule register_model:
    input:
        # with several align.seeds, the first seed's model is the registered one (each seed is scored by evaluate)
        ckpt=expand(rules.align.output.ckpt, seed=align_seeds()[0])[0],
    output:
        record=f"{RES}/register/registered_model.json",
    log:
        "logs/register/register_model.log",
    benchmark:
        "logs/register/register_model.bench.tsv"
    conda:
        "../../envs/alta.yaml"
    resources:
        runtime=30,
        mem_mb=8000,
    params:
        py=PY,
        outdir=lambda w, output: str(Path(output.record).parent),
        tok=lambda w, input: str(Path(input.ckpt).parent / "tokenizer"),
        name=config["mlflow"].get("registered_model", "alta"),
    shell:
        "OMP_NUM_THREADS=1 {params.py} -m alta.report.register --checkpoint {input.ckpt} --tokenizer {params.tok}"
        " --name {params.name} --out {params.outdir} > {log} 2>&1"


rule report_tables:
    input:
        stats=rules.pair.output.stats,
        rejects=[
            rules.extract_merge.output.rejects,
            rules.sections.output.rejects,
            rules.pair.output.dropped,
        ],
        # the last jobs of `all`: every other benchmark file exists when this one runs
        after=[rules.evaluate.output.report, rules.register_model.output.record],
    output:
        coverage=report(
            f"{RES}/report/pairing_coverage.csv",
            caption="../report/coverage.rst",
            category="1. Data",
            subcategory="Pairing coverage",
        ),
        rejects=report(
            f"{RES}/report/rejects_by_reason.csv",
            caption="../report/rejects.rst",
            category="1. Data",
            subcategory="Rejects by reason",
        ),
        bench=report(
            f"{RES}/report/stage_benchmarks.csv",
            caption="../report/benchmarks.rst",
            category="4. Stage benchmarks",
            subcategory="Jobs",
        ),
    log:
        "logs/report/report_tables.log",
    conda:
        "../../envs/alta.yaml"
    resources:
        runtime=10,
        mem_mb=2000,
    params:
        py=PY,
        outdir=lambda w, output: str(Path(output.coverage).parent),
        results=lambda w, input: str(Path(input.stats).parents[1]),
        logs="logs",
    shell:
        "{params.py} -m alta.report.tables --results {params.results} --logs {params.logs} --out {params.outdir} > {log} 2>&1"
