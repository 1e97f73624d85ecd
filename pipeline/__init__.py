"""The roof: pipeline steps, the Airflow runner, the CLI, the demo, and the log sources (simulator, importers)."""
