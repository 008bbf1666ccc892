# Hydra configuration groups of mtbench. This folder ships inside the package as
# `mtbench.configs` (see pyproject.toml), so the CLI finds it from any directory.
