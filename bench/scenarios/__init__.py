"""One module per scenario; each takes the BenchContext and returns its ScenarioResult(s)."""
