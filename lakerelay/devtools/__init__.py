"""Developer tools: the sample landing-zone generator and the end-to-end demo."""
