"""Move the `champion` alias to the model version the endpoint serves, once
ferry has deployed it: the newest successful GitHub deployment of the
platform repo says which commit is live, and that commit's platform.yaml
says which version the endpoint serves. A promotion PR that was rejected,
or whose deployment failed (ferry rolled the endpoint back), leaves the
alias where it was; a PR closed unmerged withdraws its `challenger`."""

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from mlplatform import ENDPOINT, MODEL_NAME


@dag(
    dag_id="diagnosis_champion",
    schedule=timedelta(minutes=10),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "data-science", "retries": 2, "retry_delay": timedelta(minutes=2)},
    tags=["ml", "promotion", MODEL_NAME],
    doc_md=__doc__,
)
def diagnosis_champion():
    @task
    def follow_deployment() -> dict:
        from mlplatform import promotion, registry

        s = promotion.settings()
        gh = promotion.GitHub(s["token"], s["api"])
        result = {"champion": registry.alias(MODEL_NAME, registry.CHAMPION)}
        sha = promotion.deployed_commit(gh, s["repo"], s["environment"])
        if sha is None:
            print(f"no successful deployment to `{s['environment']}` yet; aliases unchanged")
        else:
            text = promotion.file_at(gh, s["repo"], "platform.yaml", sha)
            served = promotion.served_versions(text, ENDPOINT, MODEL_NAME)
            print(f"{sha[:12]} (deployed) serves {MODEL_NAME} {sorted(served) or 'in no version this DAG made'}")
            if len(served) == 1:
                (version,) = served
                if version != result["champion"]:
                    registry.crown(MODEL_NAME, version)
                    before = result["champion"]
                    print(f"champion: v{before} -> v{version}" if before else f"champion: v{version} (the first)")
                    result["champion"] = version
            elif len(served) > 1:
                print("variants serve different versions (a canary): champion unchanged")
        challenger = registry.alias(MODEL_NAME, registry.CHALLENGER)
        if challenger is not None:
            pr = promotion.pull_request(gh, s["repo"], promotion.promotion_branch(MODEL_NAME, challenger))
            if pr is not None and pr["state"] == "closed" and not pr.get("merged_at"):
                registry.withdraw(MODEL_NAME, challenger)
                print(f"challenger v{challenger} withdrawn: {pr['html_url']} was closed unmerged")
                challenger = None
        result["challenger"] = challenger
        return result

    follow_deployment()


diagnosis_champion()
