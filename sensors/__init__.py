"""Sensors: new landing files → ingest runs; new Delta versions → post runs; failed runs → clear logs."""
