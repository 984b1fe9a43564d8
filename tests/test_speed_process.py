"""speed.process: a module imported in a thread while the data decodes; the Recorder's use of it."""

from __future__ import annotations

import sys
import threading

import pytest

from lenet.speed.process import import_in_background
from lenet.store.recorder import Recorder


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A folder on sys.path for throwaway modules, removed from sys.modules afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return name

    yield make
    for name in names:
        sys.modules.pop(name, None)


def test_the_module_is_imported_by_another_thread_while_the_body_runs(module_dir):
    name = module_dir("slow_to_import", "import threading, time\n"
                                        "IMPORTED_BY = threading.current_thread().name\n"
                                        "time.sleep(0.2)\n")
    wait = import_in_background(name)
    body_ran_while = [t.name for t in threading.enumerate() if t.name == f"import {name}"]
    wait()
    assert body_ran_while == [f"import {name}"]
    assert sys.modules[name].IMPORTED_BY == f"import {name}"  # done when the block ends
    assert not any(t.name == f"import {name}" for t in threading.enumerate())


def test_a_failed_import_is_left_for_its_use_to_report(module_dir, capsys):
    name = module_dir("broken_module", "raise ImportError('a dependency is missing')\n")
    import_in_background(name)()
    assert name not in sys.modules
    assert capsys.readouterr().err == ""  # the thread said nothing
    with pytest.raises(ImportError, match="a dependency is missing"):
        __import__(name)


def test_a_run_with_files_imports_its_plotting_ahead_and_one_in_memory_does_not(tmp_path, monkeypatch):
    from lenet.store import recorder

    asked: list[str | None] = []
    spy = recorder.import_in_background
    monkeypatch.setattr(recorder, "import_in_background", lambda module: asked.append(module) or spy(module))
    Recorder(None).ready()
    Recorder(tmp_path / "run").ready()
    assert asked == [None, "lenet.use.figures"]
    assert "lenet.use.figures" in sys.modules
