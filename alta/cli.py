"""The ``alta`` console script: one subcommand per pipeline stage plus tools.

Each subcommand is ``alta.<module>.main(argv)``; modules are imported lazily so that ``alta --help`` is instant
and a stage's heavy dependencies (torch, pydicom) load only when that stage runs. Snakemake rules call the same
modules as ``python -m alta.<module>``.
"""

from __future__ import annotations

import argparse
import importlib
import json
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


SECTION_HELP = ("this stage's config section as JSON (how every rule passes its section): each key is the option "
                "of the same name (png_sample -> --png-sample); options given on the command line win")


def parse_args(parser: argparse.ArgumentParser, argv, workflow_keys=()) -> argparse.Namespace:
    """``parser.parse_args(argv)`` where ``--config-json '{...}'`` (the stage's config section) gives the defaults of
    the options of the same names, so a config key, its command-line flag and the variable that holds it share one
    name. Keys in ``workflow_keys`` configure the job, not the command (``tokenizer.path``), and are skipped; any
    other key that is not an option, or a value outside an option's choices, is an error naming it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    target = parser
    for action in parser._actions:  # a subcommand's options live on its own parser (alta extract shard ...)
        if isinstance(action, argparse._SubParsersAction) and argv and argv[0] in action.choices:
            target = action.choices[argv[0]]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config-json")
    known, _ = pre.parse_known_args(argv)
    if known.config_json:
        section = json.loads(known.config_json)
        options = {a.dest: a for a in target._actions if a.dest not in ("help", "config_json")}
        unknown = sorted(set(section) - set(options) - set(workflow_keys))
        if unknown:
            target.error(f"--config-json: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(options))}")
        for key, value in section.items():
            action = options.get(key)
            if action is not None and action.choices is not None and value not in action.choices:
                target.error(f"--config-json: {key}={value!r} is not one of {', '.join(map(str, action.choices))}")
        target.set_defaults(**{k: v for k, v in section.items() if k in options})
    return parser.parse_args(argv)


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
