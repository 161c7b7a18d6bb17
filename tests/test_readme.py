"""The README and docs/ are the user's manual: their generated tables match the code, the
interface tables name every field the interfaces define, every command in a ```bash block
exists and takes the options it is given, the Python example runs, and relative links resolve.

Commands go in ```bash blocks (checked); synopses with [optional] parts go in plain ``` blocks.
After changing lion_ros/serving/parameters.py, regenerate the README's parameter tables with

    .venv/bin/python tests/test_readme.py --write
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from lion_ros.serving.parameters import NodeParams, SyntheticCameraParams, markdown_table

ROOT = Path(__file__).resolve().parents[1]
README_PATH = ROOT / "README.md"
CARD_PATH = ROOT / "lion_ros" / "assets" / "lion-nano" / "MODEL_CARD.md"
MANUAL = [README_PATH, CARD_PATH, *sorted((ROOT / "docs").rglob("*.md"))]
GENERATED = {cls.__name__: cls for cls in (NodeParams, SyntheticCameraParams)}
# <!-- generated: NodeParams ... -->, the table, <!-- end generated -->
GENERATED_BLOCK = re.compile(r"(<!-- generated: (\w+)[^>]*-->\n)((?:(?!<!--).)*?)\n?<!-- end generated -->", re.S)
# Third-party tools a command may start with; their options are theirs to check.
EXTERNAL = {"cd", "git", "pip", "apt", "colcon", "source", "python3", "mkdir", "cp", "du", "export", "."}
PREFIXES = {"sudo", "time"}


def generated_blocks(text: str) -> dict[str, str]:
    return {m.group(2): m.group(3) for m in GENERATED_BLOCK.finditer(text)}


def regenerate(text: str) -> str:
    def table(m: re.Match) -> str:
        return m.group(1) + markdown_table(GENERATED[m.group(2)]) + "\n<!-- end generated -->"

    return GENERATED_BLOCK.sub(table, text)


def test_readme_parameter_tables_are_generated_from_the_code() -> None:
    blocks = generated_blocks(README_PATH.read_text(encoding="utf-8"))
    assert set(blocks) == set(GENERATED), f"README's generated blocks: {sorted(blocks)}, expected {sorted(GENERATED)}"
    for name, cls in GENERATED.items():
        assert blocks[name] == markdown_table(cls), (
            f"README's {name} table is out of date: run `.venv/bin/python tests/test_readme.py --write`"
        )


def test_readme_names_both_setup_commands() -> None:
    readme = README_PATH.read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme


def interface_fields(path: Path) -> list[str]:
    """Field and constant names of a .msg/.srv/.action file, in order."""
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and line != "---":
            names.append(line.split()[1].split("=")[0].strip())
    return names


def test_readme_describes_every_field_of_the_ask_interface() -> None:
    readme = README_PATH.read_text(encoding="utf-8")
    fields = interface_fields(ROOT / "srv" / "Ask.srv") + interface_fields(ROOT / "action" / "Ask.action")
    missing = sorted({f for f in fields if f"`{f}`" not in readme})
    assert not missing, f"README's Ask tables do not name {missing}"
    codes = re.findall(r"uint8 (\w+) = (\d+)", (ROOT / "msg" / "ErrorCode.msg").read_text())
    missing = [f"{name}={value}" for name, value in codes if f"`{name}`={value}" not in readme]
    assert not missing, f"README's error code list lacks {missing}"


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks, also those indented under a list item."""
    blocks = re.findall(rf"^([ \t]*)```{language}\n(.*?)^\1```", text, re.S | re.M)
    return [textwrap.dedent(body) for _, body in blocks]


def commands(text: str) -> list[list[str]]:
    """The simple commands of a document's bash blocks, as token lists."""
    found = []
    for block in fenced_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            current: list[str] = []
            for token in lexer:
                if token in {";", "&&", "||", "|", "&"}:
                    found.append(current)
                    current = []
                else:
                    current.append(token)
            found.append(current)
    return [c for c in found if c]


def console_scripts() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
            if ep.value.startswith("lion_ros.")}


_HELP: dict[str, str] = {}


def help_text(name: str, entry_point: importlib.metadata.EntryPoint) -> str:
    """The program's --help, as a user gets it (argparse exits after printing it)."""
    if name not in _HELP:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
            entry_point.load()(["--help"])
        assert exited.value.code == 0, f"{name} --help failed"
        _HELP[name] = out.getvalue()
    return _HELP[name]


def options(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--")]


def check_config(tokens: list[str], where: str) -> None:
    from lion_ros.train.cli import config_path

    for flag in ("--config", "--lineage"):
        if flag in tokens:
            name = tokens[tokens.index(flag) + 1]
            assert config_path(name).is_file(), f"{where}: {flag} {name} is neither a file nor a packaged config"


def check_command(tokens: list[str], where: str, scripts: dict[str, importlib.metadata.EntryPoint]) -> None:
    while tokens and (tokens[0] in PREFIXES or re.fullmatch(r"[A-Z_]+=\S*", tokens[0])):
        tokens = tokens[1:]
    head, args = tokens[0], tokens[1:]
    if head in scripts:
        known = set(re.findall(r"--[\w-]+", help_text(head, scripts[head])))
        unknown = [o for o in options(args) if o not in known]
        assert not unknown, f"{where}: {head} has no option {unknown}"
        if head == "lion-train":
            check_config(args, where)
    elif head == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in args:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{where}: no make target {target}"
    elif head in {"bash", "python"}:
        if args[0] == "-m":
            assert importlib.util.find_spec(args[1]) is not None, f"{where}: no module {args[1]}"
            check_config(args, where)
            return
        script = ROOT / args[0]
        assert script.is_file(), f"{where}: no file {args[0]}"
        unknown = [o for o in options(args[1:]) if o not in script.read_text()]
        assert not unknown, f"{where}: {args[0]} does not know {unknown}"
    elif head == "torchrun":
        module = args[args.index("-m") + 1]
        assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
        check_config(args, where)
    elif head == "ros2":
        if args[0] == "launch":
            assert (ROOT / "launch" / args[2]).is_file(), f"{where}: no launch file {args[2]}"
        elif args[0] == "run":
            assert (ROOT / "nodes" / args[2]).is_file(), f"{where}: no executable {args[2]}"
    else:
        assert head in EXTERNAL, f"{where}: unknown command {head!r} (a third-party tool? add it to EXTERNAL)"


@pytest.mark.parametrize("path", MANUAL, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_exists_with_the_options_it_is_given(path: Path) -> None:
    scripts = console_scripts()
    assert "lion-ask" in scripts, "lion_ros is not installed (pip install -e .): its console scripts are missing"
    for tokens in commands(path.read_text(encoding="utf-8")):
        check_command(tokens, f"{path.relative_to(ROOT)}: {shlex.join(tokens)}", scripts)


@pytest.mark.parametrize("path", MANUAL, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+:", target):
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to a missing {target}"


def test_the_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example, on a synthetic test scene saved as the table.png it reads."""
    import cv2
    import torch

    from lion_ros.data.synthetic import render_scene, scene_seed

    (example,) = fenced_blocks(README_PATH.read_text(encoding="utf-8"), "python")
    scene = render_scene(scene_seed("test", 0), split="test")
    cv2.imwrite(str(tmp_path / "table.png"), cv2.cvtColor(scene.rgb, cv2.COLOR_RGB2BGR))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace: dict = {}
        with contextlib.redirect_stdout(io.StringIO()) as out:
            exec(compile(example, "README.md", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    answer = namespace["answer"]
    assert answer.boxes, f"the example's question was not grounded: {answer.text!r}"
    assert answer.text in out.getvalue()


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_readme.py --write  (regenerates the README's parameter tables)")
    README_PATH.write_text(regenerate(README_PATH.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"regenerated {', '.join(GENERATED)} in {README_PATH}")
