"""Run configs (ml_collections), one file per setting. A package, installed with the library, so that
the commands find their default config (`configs.hybrid`) after a non-editable `pip install .`; any of
these files, or a copy of one, is still given by path: `--config=configs/self_forcing.py`."""
