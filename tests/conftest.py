import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see memlaw/__init__.py
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests that load a real model")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="needs --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_base():
    from memlaw.models import load_base

    return load_base("tiny", dtype="float32")


@pytest.fixture(scope="session")
def tiny_records():
    """Eight random 6-digit values behind keys whose last character differs (the tiny model needs it)."""
    import random

    from memlaw.records import Record

    rng = random.Random(0)
    return [Record(f"key {c}", "".join(rng.choice("0123456789") for _ in range(6))) for c in "abcdefgh"]


@pytest.fixture(scope="session")
def plain():
    from memlaw.config import PromptConfig

    return PromptConfig(template="plain")


def docs_script(name: str):
    """docs/NAME.py imported as a module (once): the scripts that write docs/ (make_guide, make_reproduction)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "docs" / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]
