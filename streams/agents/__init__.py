"""The Faust agents: the batch loop every agent runs."""
