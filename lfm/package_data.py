"""Where the data shipped inside the package lives: ``lfm/data`` (the embedded organism's checkpoints, items
and task YAMLs, the real pair's study results, `lfm lab`'s JupyterLab settings).

Found through the package itself (importlib.resources), so a checkout, an editable install and an installed
wheel all read the one copy. lm-eval and lmms-eval read the task YAMLs as files, so the package must be
installed as files (not zipped): ``files`` then gives a real directory.
"""

from importlib.resources import files
from pathlib import Path

DATA_DIR = Path(str(files("lfm") / "data"))
ORGANISM_DIR = DATA_DIR / "organism"
REALPAIR_RESULTS_DIR = DATA_DIR / "realpair"
LAB_CONFIG_DIR = DATA_DIR / "lab"  # a Jupyter config directory: labconfig/default_setting_overrides.json
