# Kept for editable installs with older pip/setuptools; all metadata lives in setup.cfg.
from setuptools import setup

setup()
