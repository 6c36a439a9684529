"""Ray Tune studies over the Agent-FLAN mixture: search spaces, trials, results."""
