"""The round as Prefect flows: the DAG comes from dvc.yaml, each task runs one DVC stage."""
