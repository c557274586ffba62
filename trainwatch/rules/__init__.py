"""Rules: pure functions (numpy only) that turn measurements into findings."""
