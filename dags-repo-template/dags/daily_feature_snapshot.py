"""Builds a daily snapshot of features for training, as a TaskFlow pipeline.

Stands in for the ML DAGs of the full template: extract, validate, publish.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task


@dag(
    dag_id="daily_feature_snapshot",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"owner": "data-science", "retries": 1, "retry_delay": timedelta(minutes=5)},
    tags=["features", "ml"],
)
def daily_feature_snapshot():
    @task
    def extract() -> list[dict]:
        return [{"id": i, "value": i * 0.5} for i in range(100)]

    @task
    def validate(rows: list[dict]) -> list[dict]:
        if not rows:
            raise ValueError("no rows extracted")
        bad = [r for r in rows if r["value"] < 0]
        if bad:
            raise ValueError(f"{len(bad)} rows with negative values")
        return rows

    @task
    def publish(rows: list[dict]) -> int:
        return len(rows)

    publish(validate(extract()))


daily_feature_snapshot()
