"""alta: from chest radiograph DICOMs and free-text reports to an ALTA-aligned vision-language model.

The package is a library first: every pipeline stage is a module with a pure core and a ``main(argv)`` command line,
called by the Snakemake rules in ``workflow/rules`` and by the ``alta`` console script (``alta.cli``).

Stages, in pipeline order::

    alta.demo.dataset      synthetic MIMIC-CXR-layout dataset (DICOMs, reports, metadata, benchmark files)
    alta.data.extract   DICOM / JPG / PNG -> rendered 8-bit images, packed store, images.parquet, rejects.parquet
    alta.data.sections  free-text reports -> sections.parquet (MIT-LCP sectioning, training text)
    alta.data.pair      images + sections -> pairs.parquet (temporal multi-view rows), pairs_stats.json
    alta.train.mrm       masked record modeling pretraining
    alta.train.align     ALTA adapter alignment
    alta.evaluate  benchmark evaluation
"""

__version__ = "0.1.0"
