"""Watching a ladder from outside it: `clipscale status` reads progress from MLflow, `clipscale ui`
opens MLflow's UI with direct links to the ladder. Both only read the tracking store."""
