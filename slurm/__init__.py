"""The sbatch templates, installed as the package ``dtrain.slurm_templates`` (pyproject.toml): see README.md.

This file only makes the folder a regular package: setuptools' editable installs cannot import a
namespace package mapped from another directory (pypa/setuptools#4943), so importlib.resources would not
find the templates in a checkout installed with ``pip install -e .``.
"""
