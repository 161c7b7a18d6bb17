"""The README is the user's manual: its parameter tables must match the code."""
from pathlib import Path

import pytest

from lion_ros.serving.parameters import NodeParams, SyntheticCameraParams, markdown_table

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("params", [NodeParams, SyntheticCameraParams])
def test_readme_has_the_current_parameter_table(params):
    assert markdown_table(params) in README, (
        f"README's {params.__name__} table is out of date: regenerate it with "
        f"lion_ros.serving.parameters.markdown_table({params.__name__})"
    )


def test_readme_names_both_setup_commands():
    assert "make demo" in README and "make test" in README
