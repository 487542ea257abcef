"""Run configs, one ml_collections file per model (get_config() -> ConfigDict). Installed as
optima_jax.configs; `--config <name>` resolves a bare name here."""
