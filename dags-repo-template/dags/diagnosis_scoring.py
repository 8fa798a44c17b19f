"""Daily batch scoring with the champion model (the version the endpoint
serves): loads the registered champion from MLflow and records its
accuracy on today's batch; skipped until a first version is deployed."""

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from mlplatform import MODEL_NAME

default_args = {"owner": "data-science", "retries": 3, "retry_delay": timedelta(minutes=10)}


@dag(
    dag_id="diagnosis_scoring",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=default_args,
    tags=["ml", "scoring", MODEL_NAME],
    doc_md=__doc__,
)
def diagnosis_scoring():
    @task
    def score() -> dict:
        import mlflow
        from airflow.sdk.exceptions import AirflowSkipException
        from sklearn.metrics import accuracy_score

        from mlplatform import data, registry

        if registry.alias(MODEL_NAME, registry.CHAMPION) is None:
            # Before the first deployment: nothing serves, nothing to score.
            raise AirflowSkipException(f"{MODEL_NAME} has no champion yet (none deployed)")
        ds = data.load()
        model = mlflow.sklearn.load_model(f"models:/{MODEL_NAME}@{registry.CHAMPION}")
        accuracy = float(accuracy_score(ds.y_test, model.predict(ds.x_test)))
        return {"rows": int(len(ds.y_test)), "accuracy": accuracy}

    score()


diagnosis_scoring()
