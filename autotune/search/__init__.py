"""The search: an Optuna controller (ask/tell over the mixture simplex and the schedule), the study loop
that drives it, launchers that give each job a process, the worker that runs inside it, and the ladder
driver that re-runs chosen trials at larger budgets."""
