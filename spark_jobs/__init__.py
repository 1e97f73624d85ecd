"""PySpark jobs (build_samples, build_features) and the Great Expectations data checks."""
