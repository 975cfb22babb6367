-- Runs once, when the PostgreSQL data volume is first initialised: a second database for
-- Optuna's storage next to MLflow's (both use an alembic_version table, so they cannot share).
CREATE DATABASE optuna;
