"""Checks that the platform's shared services answer, every 15 minutes.

A small DAG with no third-party imports at parse time: Airflow parses DAG
files often, so anything heavy belongs inside the tasks.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task


@dag(
    dag_id="platform_healthcheck",
    schedule=timedelta(minutes=15),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args={"owner": "platform", "retries": 2, "retry_delay": timedelta(minutes=1)},
    tags=["platform", "health"],
)
def platform_healthcheck():
    @task
    def endpoints() -> list[str]:
        import os

        return [
            os.environ.get("MLFLOW_TRACKING_URI", "http://mlflow.mlflow:5000") + "/health",
        ]

    @task
    def probe(urls: list[str]) -> dict[str, int]:
        import urllib.request

        results = {}
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - internal URL
                results[url] = response.status
        return results

    probe(endpoints())


platform_healthcheck()
