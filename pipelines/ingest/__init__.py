"""Auto Loader-style ingestion: discover new landing files, plan a batch, append it to Delta once."""
