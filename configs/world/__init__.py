"""The world pipeline's configs (issue 12): configs/world/teacher.py (flow_matching), ode_init.py,
self_forcing.py (DMD phase 1) and hybrid.py (DMD phase 2): the top-level configs with the world's
models, text, codec and geometry (common.py); scripts/world_pipeline.sh runs them in order."""
