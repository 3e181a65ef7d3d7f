"""dgmrun's config options, shipped in the wheel as ``dgmrun.conf``. Each option starts from its declaration
in ``dgmrun.schema`` (``/schema/<group>/<Class>``), registered when that module is imported."""

import dgmrun.schema  # noqa: F401  (registers the declarations before Hydra composes an option)
