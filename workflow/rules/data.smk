# Data half of the pipeline: demo dataset -> extract (sharded) -> sections -> pair.


checkpoint demo_data:
    output:
        truth=f"{ROOT}/demo_truth.json",
    log:
        "logs/demo_data/demo_data.log",
    benchmark:
        "logs/demo_data/demo_data.bench.tsv"
    conda:
        "../../envs/alta.yaml"
    threads: config["demo"].get("workers", 2)
    resources:
        runtime=30,
        mem_mb=4000,
    params:
        py=PY,
        root=lambda w, output: str(Path(output.truth).parent),
        cfg=lambda w: section("demo", job_keys=("workers",)),
    shell:
        "{params.py} -m alta.demo.dataset --out {params.root} --workers {threads} --config-json {params.cfg}"
        " > {log} 2>&1"


rule extract_shard:
    input:
        shard_input_files,
    output:
        images=f"{RES}/extract/shards/{{shard}}/images.parquet",
        rejects=f"{RES}/extract/shards/{{shard}}/rejects.parquet",
        store=f"{RES}/extract/shards/{{shard}}/store.u8",
    log:
        "logs/extract/{shard}.log",
    benchmark:
        "logs/extract/{shard}.bench.tsv"
    conda:
        "../../envs/alta.yaml"
    threads: config["extract"].get("workers", 2)
    resources:
        runtime=240,
        mem_mb=8000,
    params:
        py=PY,
        outdir=lambda w, output: str(Path(output.images).parents[2]),
        cfg=lambda w: section("extract"),
        source=DATA["source"],
        root=opt("--root", ROOT),
        manifest=opt("--manifest", DATA.get("manifest")),
        metadata=lambda w: opt("--metadata", _metadata_csv()),
        rows=shard_digest,
    shell:
        "{params.py} -m alta.data.extract shard --source {params.source} {params.root} {params.manifest} {params.metadata}"
        " --shard {wildcards.shard} --out {params.outdir} --workers {threads} --config-json {params.cfg} > {log} 2>&1"


rule extract_merge:
    input:
        lambda w: expand(
            f"{RES}/extract/shards/{{shard}}/images.parquet", shard=shard_names()
        ),
        lambda w: expand(
            f"{RES}/extract/shards/{{shard}}/rejects.parquet", shard=shard_names()
        ),
    output:
        images=f"{RES}/extract/images.parquet",
        rejects=f"{RES}/extract/rejects.parquet",
        stats=f"{RES}/extract/extract_stats.json",
    log:
        "logs/extract/merge.log",
    benchmark:
        "logs/extract/merge.bench.tsv"
    conda:
        "../../envs/alta.yaml"
    resources:
        runtime=30,
        mem_mb=8000,
    params:
        py=PY,
        outdir=lambda w, output: str(Path(output.images).parent),
        shards=lambda w: ",".join(shard_names()),
    shell:
        "{params.py} -m alta.data.extract merge --out {params.outdir} --shards {params.shards} > {log} 2>&1"


rule sections:
    input:
        report_files,
    output:
        sections=f"{RES}/sections/sections.parquet",
        rejects=f"{RES}/sections/rejects.parquet",
        stats=f"{RES}/sections/sections_stats.json",
    log:
        "logs/sections/sections.log",
    benchmark:
        "logs/sections/sections.bench.tsv"
    conda:
        "../../envs/alta.yaml"
    resources:
        runtime=60,
        mem_mb=8000,
    params:
        py=PY,
        outdir=lambda w, output: str(Path(output.sections).parent),
        root=ROOT,
        cfg=lambda w: section("sections"),
        source="manifest" if DATA["source"] == "manifest" else "mimic",
        where=(
            f"--manifest {DATA['manifest']}"
            if DATA["source"] == "manifest"
            else f"--root {ROOT}"
        ),
    shell:
        "{params.py} -m alta.data.sections --source {params.source} {params.where} --out {params.outdir}"
        " --config-json {params.cfg} > {log} 2>&1"


rule pair:
    input:
        images=rules.extract_merge.output.images,
        sections=rules.sections.output.sections,
        split=split_csv_input,
    output:
        pairs=f"{RES}/pair/pairs.parquet",
        stats=f"{RES}/pair/pairs_stats.json",
        train_csv=f"{RES}/pair/train.csv",
        dropped=f"{RES}/pair/dropped.parquet",
    log:
        "logs/pair/pair.log",
    benchmark:
        "logs/pair/pair.bench.tsv"
    conda:
        "../../envs/alta.yaml"
    resources:
        runtime=30,
        mem_mb=8000,
    params:
        py=PY,
        outdir=lambda w, output: str(Path(output.pairs).parent),
        cfg=lambda w: section("pair"),
        split=lambda w, input: opt(
            "--split-csv", input.split[0] if input.split else None
        ),
        seed=config["seed"],
    shell:
        "{params.py} -m alta.data.pair --images {input.images} --sections {input.sections} {params.split}"
        " --out {params.outdir} --seed {params.seed} --config-json {params.cfg} > {log} 2>&1"
