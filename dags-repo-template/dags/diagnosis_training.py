"""Train, tune and register the diagnosis classifier; when it beats the
registered champion, package it for SageMaker, make it `challenger` and
propose it through a platform-repo pull request (diagnosis_champion crowns
it once deployed)."""

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from mlplatform import ENDPOINT, MODEL_NAME

default_args = {"owner": "data-science", "retries": 2, "retry_delay": timedelta(minutes=5)}


@dag(
    dag_id="diagnosis_training",
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=default_args,
    tags=["ml", "training", MODEL_NAME],
    doc_md=__doc__,
)
def diagnosis_training():
    @task
    def validate_data() -> dict:
        from mlplatform import data

        return data.validate(data.load())

    @task
    def train_and_register(stats: dict) -> dict:
        from mlplatform import data, registry, training

        trained = training.train(data.load())
        return registry.log_and_register(trained, stats, MODEL_NAME, experiment=MODEL_NAME)

    @task.short_circuit
    def beats_champion(candidate: dict) -> bool:
        from mlplatform import registry, training

        current = registry.champion(MODEL_NAME)
        print(f"candidate v{candidate['version']} {candidate['metrics']}, champion {current}")
        return training.better(candidate["metrics"], current)

    @task
    def package(candidate: dict) -> dict:
        from mlplatform import packaging, promotion

        packaged = packaging.package(MODEL_NAME, candidate["version"], promotion.settings()["bucket"])
        print(("wrote" if packaged["written"] else "already there:"), packaged["model_data"])
        return packaged

    @task
    def promote(candidate: dict, packaged: dict) -> str:
        from mlplatform import promotion, registry

        s = promotion.settings()
        version = candidate["version"]
        model_data = packaged["model_data"]
        # Under review: it becomes champion once ferry has deployed it
        # (diagnosis_champion), not before.
        registry.nominate(MODEL_NAME, version)
        pr = promotion.open_pull_request(
            promotion.GitHub(s["token"], s["api"]),
            s["repo"],
            s["base"],
            "platform.yaml",
            branch=promotion.promotion_branch(MODEL_NAME, version),
            title=f"Promote {MODEL_NAME} v{version} to the {ENDPOINT} endpoint",
            body=(
                f"Registered version {version} beat the champion: {candidate['metrics']}.\n"
                f"MLflow run `{candidate['run_id']}`; it is `challenger` in the registry. "
                "ferry will comment the plan; merge to deploy. It becomes `champion` once "
                "ferry has deployed it; closing this PR unmerged withdraws it."
            ),
            edit=lambda text: promotion.point_endpoint(text, ENDPOINT, MODEL_NAME, model_data),
        )
        return pr["html_url"] if pr else "platform.yaml already serves this version"

    candidate = train_and_register(validate_data())
    # The artifact exists before the PR that names it: a merge can never
    # point the endpoint at a missing object.
    packaged = package(candidate)
    beats_champion(candidate) >> packaged
    promote(candidate, packaged)


diagnosis_training()
