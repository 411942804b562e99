"""After evaluation (``workflow/rules/report.smk``): the Model Registry and the Snakemake report.

* :mod:`alta.report.register`     — the ``register_model`` stage: the align checkpoint as an MLflow model version.
* :mod:`alta.report.mlflow_model` — the MLflow pyfunc flavour of an ALTA checkpoint (``models:/NAME/N``).
* :mod:`alta.report.tables`       — the ``report_tables`` stage: the tables ``snakemake --report`` shows.
"""
