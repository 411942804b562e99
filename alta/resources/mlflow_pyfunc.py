# The code of the alta MLflow model (models-from-code: nothing is pickled). See alta/report/mlflow_model.py.
import mlflow.models

from alta.report.mlflow_model import AltaEmbedModel

mlflow.models.set_model(AltaEmbedModel())
