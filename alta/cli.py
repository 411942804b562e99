"""The ``alta`` console script: one subcommand per pipeline stage plus tools.

Each subcommand is ``alta.<module>.main(argv)``; modules are imported lazily so that ``alta --help`` is instant
and a stage's heavy dependencies (torch, pydicom) load only when that stage runs. Snakemake rules call the same
modules as ``python -m alta.<module>``.
"""

from __future__ import annotations

import importlib
import logging
import sys

# subcommand -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("alta.demo.dataset", "generate the synthetic MIMIC-CXR-layout demo dataset"),
    "extract": ("alta.data.extract", "DICOM/JPG/PNG -> rendered images, packed store, images.parquet, rejects.parquet"),
    "sections": ("alta.data.sections", "reports -> sections.parquet (MIT-LCP sectioning, training text)"),
    "pair": ("alta.data.pair", "images + sections -> temporal multi-view pairs.parquet"),
    "tokenizer": ("alta.train.tokenizer", "train a WordPiece tokenizer on the report corpus (no model hub needed)"),
    "text_pretrain": ("alta.train.text_pretrain", "pretrain the preset BERT on the reports (CXR-BERT stand-in, offline)"),
    "mrm": ("alta.train.mrm", "masked record modeling pretraining"),
    "align": ("alta.train.align", "ALTA adapter alignment"),
    "evaluate": ("alta.evaluate.run", "benchmark evaluation"),
    "register_model": ("alta.report.register", "log the align checkpoint as an MLflow model and register a version"),
    "report_tables": ("alta.report.tables", "the data and benchmark tables of the Snakemake report"),
    "embed": ("alta.evaluate.embed", "embed new images or texts with a trained or imported checkpoint"),
    "zeroshot": ("alta.evaluate.embed", "zero-shot scores for images against text prompts"),
    "probe": ("alta.evaluate.probe", "what frozen features know: [CLS] diversity and linear-probe AUROC per checkpoint"),
    "params": ("alta.models.params", "print the parameter breakdown of a preset"),
    "config": ("alta.config", "validate a config file against the schema"),
    "tracking-sync": ("alta.tracking_sync", "replay a local tracking.jsonl into an MLflow server"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: alta <command> [options]   (alta <command> --help for details)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"alta: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    if name == "zeroshot":
        rest = ["zeroshot", *rest]
    elif name == "embed":
        rest = ["embed", *rest]
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
