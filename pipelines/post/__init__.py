"""Posting new Delta records to REST sinks from a Spark op."""
