"""The environment definitions agree: pyproject pins == envs/requirements.txt; the console script is declared."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _reqs(lines):
    return sorted(l.strip() for l in lines if l.strip() and not l.strip().startswith("#"))


def test_requirements_match_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = py["project"]["dependencies"]
    req = (ROOT / "envs" / "requirements.txt").read_text().splitlines()
    assert _reqs(deps) == _reqs(req)
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_console_script_and_stage_modules():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert py["project"]["scripts"]["alta"] == "alta.cli:main"
    from alta import cli

    for name, (module, _) in cli.COMMANDS.items():
        path = ROOT / (module.replace(".", "/") + ".py")
        assert path.exists(), f"alta {name}: module {module} missing"
