"""Everything is in pyproject.toml; this file only reads the version from package.xml, the one
version source of both the ROS package and the Python distribution."""
import re
from pathlib import Path

from setuptools import setup

package_xml = (Path(__file__).parent / "package.xml").read_text(encoding="utf-8")
setup(version=re.search(r"<version>([^<]+)</version>", package_xml).group(1))
