"""A reproducible MLPerf Inference round: DVC stages, MLflow tracking, LoadGen measurements."""

__version__ = "0.1.0"
