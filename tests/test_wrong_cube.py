"""benchmarks/wrong_cube.py's episode classes: the stack failure that picked the red cube up and never
placed it must not be counted as lifting the wrong cube."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "wrong_cube.py"
spec = importlib.util.spec_from_file_location("wrong_cube", SCRIPT)
wrong_cube = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wrong_cube)


@pytest.mark.parametrize(("success", "error", "lifted", "expected"), [
    (False, "RuntimeError: boom", {"red"}, "error"),
    (True, None, {"red"}, "success"),
    (False, None, {"red", "green"}, "target lifted, not done"),
    (False, None, {"maroon"}, "other cube lifted"),
    (False, None, set(), "nothing lifted"),
])
def test_episode_class(success, error, lifted, expected):
    assert wrong_cube.episode_class(success, error, lifted, "red") == expected
    assert expected in wrong_cube.COLUMNS
