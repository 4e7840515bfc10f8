"""The library the stage entry points share: one job per module (see README, Project layout)."""
