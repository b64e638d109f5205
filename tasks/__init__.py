"""seqio Task and Mixture registrations, installed as `t5pipe.tasks`.

Importing this package imports every module in it, so each module's
registrations happen on `import t5pipe.tasks` (or a gin `import t5pipe.tasks`
line). To add tasks, drop a module into this folder. Registration reads no data
and touches neither the network nor TFDS: sources resolve their data when a
dataset is first requested.

Modules that only hold helpers (metrics, preprocessors, ...) register nothing
and are imported all the same; registering modules import them explicitly.
"""

import importlib
import pkgutil


def _import_all_modules() -> None:
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_all_modules()
