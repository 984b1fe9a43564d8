"""recorder: the plotting module imported ahead, in a thread, while the data decodes."""

from __future__ import annotations

import sys
import threading

import pytest

from lenet.store.recorder import Recorder, imported_meanwhile


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
    with imported_meanwhile(name):
        body_ran_while = [t.name for t in threading.enumerate() if t.name == f"import {name}"]
    assert body_ran_while == [f"import {name}"]
    assert sys.modules[name].IMPORTED_BY == f"import {name}"  # done when the block ends
    assert not any(t.name == f"import {name}" for t in threading.enumerate())


def test_a_failed_import_is_left_for_its_use_to_report(module_dir, capsys):
    name = module_dir("broken_module", "raise ImportError('a dependency is missing')\n")
    with imported_meanwhile(name):
        pass
    assert name not in sys.modules
    assert capsys.readouterr().err == ""  # the thread said nothing
    with pytest.raises(ImportError, match="a dependency is missing"):
        __import__(name)


def test_an_error_in_the_body_still_waits_for_the_import(module_dir):
    name = module_dir("imported_anyway", "import time\ntime.sleep(0.1)\n")
    with pytest.raises(RuntimeError, match="decoding failed"):
        with imported_meanwhile(name):
            raise RuntimeError("decoding failed")
    assert name in sys.modules
    assert not any(t.name == f"import {name}" for t in threading.enumerate())


def test_a_run_with_files_imports_its_plotting_ahead_and_one_in_memory_does_not(tmp_path, monkeypatch):
    from lenet.store import recorder

    asked: list[str | None] = []
    spy = recorder.imported_meanwhile
    monkeypatch.setattr(recorder, "imported_meanwhile", lambda module: asked.append(module) or spy(module))
    with Recorder(None).plotting_imported_meanwhile():
        pass
    with Recorder(tmp_path / "run").plotting_imported_meanwhile():
        pass
    assert asked == [None, "lenet.use.figures"]
    assert "lenet.use.figures" in sys.modules
