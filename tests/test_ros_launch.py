"""Launch files and parameter files agree with the parameters the nodes declare.

launch/launch_ros are not installed here, so the launch files are read as Python ASTs: every
DeclareLaunchArgument must feed a node parameter (or the namespace/params file), every
parameter a launch file sets must be declared by that node, and every default must be a valid
value for the parameter (parsed as YAML, as launch_ros does).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from lion_ros.serving.parameters import NodeParams, SyntheticCameraParams, flatten_yaml, markdown_table, specs

REPO = Path(__file__).resolve().parents[1]
NODE_PARAMS = {"lion_node": NodeParams, "synthetic_camera": SyntheticCameraParams}
STRUCTURAL_ARGS = {"namespace", "params_file"}  # used by the Node action itself, not a parameter
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))


def call_name(node: ast.AST) -> str:
    return node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else ""


def launch_config_arg(node: ast.AST):
    """'x' for LaunchConfiguration("x"), a local variable bound to one, or a list of one."""
    if isinstance(node, ast.List) and len(node.elts) == 1:
        return launch_config_arg(node.elts[0])
    if call_name(node) == "LaunchConfiguration":
        return node.args[0].value
    return None


def read_launch(path: Path):
    tree = ast.parse(path.read_text())
    aliases = {t.id: launch_config_arg(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
               for t in n.targets if isinstance(t, ast.Name) and launch_config_arg(n.value)}
    declared = {}
    for call in (n for n in ast.walk(tree) if call_name(n) == "DeclareLaunchArgument"):
        kw = {k.arg: k.value for k in call.keywords}
        declared[call.args[0].value] = ast.literal_eval(kw["default_value"]) if isinstance(
            kw["default_value"], ast.Constant) else None
        assert "description" in kw, f"{path.name}: argument {call.args[0].value} has no description"
    used = {n.args[0].value for n in ast.walk(tree) if call_name(n) == "LaunchConfiguration"}
    nodes = []
    for call in (n for n in ast.walk(tree) if call_name(n) == "Node"):
        kw = {k.arg: k.value for k in call.keywords}
        mapping = {}
        for item in kw["parameters"].elts:
            if isinstance(item, ast.Dict):
                for key, value in zip(item.keys, item.values):
                    arg = launch_config_arg(value)
                    if arg is None and isinstance(value, (ast.Name, ast.List)):
                        name = value.elts[0] if isinstance(value, ast.List) else value
                        arg = aliases.get(getattr(name, "id", None))
                    mapping[key.value] = ("arg", arg) if arg else ("value", ast.literal_eval(value))
        nodes.append((kw["executable"].value, mapping))
    return declared, used, nodes


def as_parameter_value(spec, value):
    value = yaml.safe_load(value) if isinstance(value, str) else value
    value = "" if value is None else value
    if spec.type is list and not isinstance(value, list):
        value = [value]  # a one-element list of a substitution, like [LaunchConfiguration("camera")]
    if spec.type is str and not isinstance(value, str):
        value = str(value)
    return spec.validate(value)


def test_every_launch_file_is_found():
    assert {p.name for p in LAUNCH_FILES} == {"desktop.launch.py", "jetson.launch.py", "demo.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_arguments_map_to_declared_node_parameters(path):
    declared, used, nodes = read_launch(path)
    assert used == set(declared), f"declared but unused or used but undeclared: {used ^ set(declared)}"
    fed = set()
    for executable, mapping in nodes:
        spec_by_name = {s.name: s for s in specs(NODE_PARAMS[executable])}
        for name, (kind, value) in mapping.items():
            assert name in spec_by_name, f"{path.name}: {executable} has no parameter {name!r}"
            if kind == "arg":
                fed.add(value)
                default = declared[value]
                as_parameter_value(spec_by_name[name], default)  # raises when invalid
            else:
                as_parameter_value(spec_by_name[name], value)
    assert set(declared) - STRUCTURAL_ARGS <= fed, f"{path.name}: arguments feeding no parameter"


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_use_declared_parameters_with_valid_values(path):
    data = yaml.safe_load(path.read_text())
    assert set(data) <= set(NODE_PARAMS), f"{path.name}: unknown node names {set(data) - set(NODE_PARAMS)}"
    for node_name, content in data.items():
        values = flatten_yaml(content["ros__parameters"])
        spec_by_name = {s.name: s for s in specs(NODE_PARAMS[node_name])}
        for name, value in values.items():
            assert name in spec_by_name, f"{path.name}: {node_name} has no parameter {name!r}"
            spec_by_name[name].validate(value)
        assert not any(v == [] for v in values.values()), "empty lists are not valid in ROS parameter files"


def test_parameter_table_documents_every_parameter():
    table = markdown_table(NodeParams)
    for spec in specs(NodeParams):
        assert f"`{spec.name}`" in table
