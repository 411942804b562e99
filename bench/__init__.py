"""Performance measurements of alta (docs/architecture.md, "Performance targets"): not tests, never timed assertions.

``python -m bench.run [--quick] [--only SECTION ...]`` runs the sections (:mod:`bench.extraction`,
:mod:`bench.loader`, :mod:`bench.step_cost`) and writes ``bench/results.json`` and ``bench/results.md``;
:mod:`bench.gpu` is a separate script for a CUDA machine. See ``bench/README.md``.
"""
