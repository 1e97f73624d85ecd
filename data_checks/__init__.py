"""Great Expectations checks of raw logs and samples (pandas, no Spark): the gate before any training."""
