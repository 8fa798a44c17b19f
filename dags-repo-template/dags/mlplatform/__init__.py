"""Shared code of the ML DAGs: data, training, the MLflow registry and the
GitOps promotion to the platform repo.

Airflow parses DAG files often, so nothing here imports scikit-learn, pandas
or MLflow at module level: the heavy imports happen inside the functions
that tasks call.
"""

MODEL_NAME = "diagnosis-classifier"
ENDPOINT = "diagnosis"
