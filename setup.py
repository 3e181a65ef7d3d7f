"""Package discovery only; everything else is in pyproject.toml.

Every package under ``dgmrun/`` is found automatically, and ``conf/`` is added as ``dgmrun.conf``
(pyproject's ``package-dir`` maps it), which automatic discovery alone cannot know about.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["dgmrun", "dgmrun.*"]), "dgmrun.conf"])
