"""MLflow: log a training run, register its model, find and move the
`champion` and `challenger` aliases. The tracking server comes from
MLFLOW_TRACKING_URI.

`challenger` is the version a promotion PR proposes; `champion` is the
version the endpoint serves, moved only once ferry has deployed it
(`diagnosis_champion`), so batch scoring and the endpoint never disagree
and a rejected PR changes nothing."""

CHAMPION = "champion"
CHALLENGER = "challenger"


def log_and_register(trained, stats: dict, model_name: str, experiment: str) -> dict:
    import mlflow
    import mlflow.sklearn

    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_params(trained.params)
        mlflow.log_params({f"data_{k}": v for k, v in stats.items()})
        mlflow.log_metrics(trained.metrics)
        info = mlflow.sklearn.log_model(
            trained.model, name="model", registered_model_name=model_name
        )
    version = info.registered_model_version
    return {"run_id": run.info.run_id, "version": str(version), "metrics": trained.metrics}


def champion(model_name: str) -> dict | None:
    """The champion's version and metrics, or None when there is none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    metrics = client.get_run(version.run_id).data.metrics
    return {"version": str(version.version), **metrics}


def alias(model_name: str, name: str) -> str | None:
    """The version `name` points at, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, name).version)
    except MlflowException:
        return None


def nominate(model_name: str, version: str) -> None:
    """Mark `version` as the one under review."""
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(model_name, CHALLENGER, version)


def crown(model_name: str, version: str) -> None:
    """`version` is served: it becomes champion, and stops being challenger."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_registered_model_alias(model_name, CHAMPION, version)
    if alias(model_name, CHALLENGER) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)


def withdraw(model_name: str, version: str) -> None:
    """The review of `version` ended without a deployment."""
    from mlflow import MlflowClient

    if alias(model_name, CHALLENGER) == version:
        MlflowClient().delete_registered_model_alias(model_name, CHALLENGER)
