"""Orchestration of the DVC stages with Prefect: schedules, retries, UI. No ML logic lives here."""
