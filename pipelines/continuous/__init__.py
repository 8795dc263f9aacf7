"""Continuous mode: one long-lived run per feed (loop, discovery watchers, coalesced reporting)."""
