"""Plain C export (lenet.use.c_export, `lenet export --format c`): compiled with the system
compiler (-std=c99 -Wall -Wextra -Wpedantic -Werror), bit for bit the integer reference for
every layer kind, integer-only, within the stack it states, and one clear line for a model
over the bounds or a machine without a compiler."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from int8_models import KINDS, random_images, trained
from lenet.cli import main
from lenet.errors import ConfigError, RunError
from lenet.use.c_export import FILES, CompilerMissing, check_c, compile_c, compiler, run_c, write_c
from lenet.use.quantize import ptq


def require_compiler() -> None:
    """Skip where there is no C compiler, saying so; under CI (the CI variable set) fail instead."""
    if compiler() is None:
        message = f"no C compiler ({os.environ.get('CC') or 'cc'}) to build the exported C with; install gcc or clang"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must compile it)")
        pytest.skip(message)


def int8_of(folder: Path, images: torch.Tensor | None = None, **model):
    images = random_images(100, seed=5) if images is None else images
    int8, _ = ptq(trained(folder, **model), images)
    return int8


@pytest.mark.parametrize("activation, pool, batch_norm", KINDS)
def test_c_equals_the_reference_for_every_layer_kind(tmp_path, activation, pool, batch_norm):
    require_compiler()
    int8 = int8_of(tmp_path / "run", activation=activation, pool=pool, batch_norm=batch_norm, init="kaiming",
                   conv_channels=[4, 6], dense=[16], pool_size=3, pool_stride=2, pool_padding=1)
    folder = write_c(int8, tmp_path / "c")
    images = random_images(64, seed=7).numpy()
    result = check_c(folder, int8, images, "random")
    assert result.identical == result.agree == 64


def test_c_for_other_channel_counts_sizes_and_classes(tmp_path):
    require_compiler()
    int8 = int8_of(tmp_path / "run", random_images(100, (3, 20, 20)), in_channels=3, input_size=20, num_classes=4,
                   conv_channels=[5, 7, 6], kernel_size=3, padding="same", activation="silu", pool="avg",
                   dense=[9, 8])
    folder = write_c(int8, tmp_path / "c")
    header = (folder / "lenet_model.h").read_text()
    assert "#define LENET_INPUT_BYTES 1200" in header and "#define LENET_NUM_CLASSES 4" in header
    assert check_c(folder, int8, random_images(50, (3, 20, 20), seed=2).numpy(), "random").identical == 50


def test_the_code_is_integer_only_and_needs_nothing_but_stdint(tmp_path):
    int8 = int8_of(tmp_path / "run", activation="sigmoid", pool="avg")
    folder = write_c(int8, tmp_path / "c")
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    for name in ("lenet_model.h", "lenet_weights.h", "lenet_model.c"):
        code = re.sub(r"/\*.*?\*/", "", (folder / name).read_text(), flags=re.S)  # comments may say "float"
        assert not re.search(r"\b(float|double|malloc|calloc|free|printf)\b", code), name
        assert set(re.findall(r"#include\s*[<\"]([^>\"]+)", code)) <= {"stdint.h", "lenet_model.h", "lenet_weights.h"}
    header = (folder / "lenet_model.h").read_text()
    assert f"#define LENET_WEIGHT_BYTES {int8.parameter_bytes}" in header


@pytest.mark.parametrize("optimize", ["-O0", "-O2", "-Os"])
def test_lenet_predict_stays_within_the_stack_it_states(tmp_path, optimize):
    require_compiler()
    int8 = int8_of(tmp_path / "run", activation="relu", pool="max", batch_norm=True, conv_channels=[16, 32],
                   dense=[96])
    folder = write_c(int8, tmp_path / "c")
    done = subprocess.run([*compiler(), "-std=c99", optimize, "-fstack-usage", "-c", str(folder / "lenet_model.c")],
                          cwd=tmp_path, capture_output=True, text=True)
    if done.returncode != 0 or not (tmp_path / "lenet_model.su").is_file():
        pytest.skip(f"{' '.join(compiler())} cannot report stack usage (-fstack-usage): {done.stderr[:200]}")
    frames = {}
    for line in (tmp_path / "lenet_model.su").read_text().splitlines():
        where, size, _ = line.split("\t")
        frames[where.rsplit(":", 1)[-1]] = int(size)
    # Any call chain is lenet_predict and some of the kernels: all of them together bound it.
    header = (folder / "lenet_model.h").read_text()
    stated = int(re.search(r"#define LENET_STACK_BYTES (\d+)", header).group(1))
    buffers = int(re.search(r"#define LENET_BUFFER_BYTES (\d+)", header).group(1))
    assert buffers <= frames["lenet_predict"] and sum(frames.values()) <= stated, frames


def test_class_names_reach_c_as_they_are(tmp_path):
    require_compiler()
    int8 = int8_of(tmp_path / "run", activation="relu", pool="max")
    names = ['say "hi"', "back\\slash", "??=trigraph", "ünïcode", "tab\there", "x", "7", "", "percent %d", "end"]
    int8.info["class_names"] = names
    folder = write_c(int8, tmp_path / "c")
    exe = compile_c(folder, tmp_path)
    done = subprocess.run([str(exe)], input=bytes(784 * 10), capture_output=True)
    best = int8.predict(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)).item()
    line = done.stdout.split(b"\n")[0]
    assert line.startswith(f"{best} {names[best]} ".encode())


def test_text_from_the_model_file_cannot_leave_the_c_comments(tmp_path):
    int8 = int8_of(tmp_path / "run", activation="relu", pool="max")
    int8.info.update({"dataset": "x */ int evil; /* y", "config": {"model": {"name": "*/ #include <stdio.h>"}}})
    folder = write_c(int8, tmp_path / "c")
    for name in FILES[:3]:
        code = re.sub(r"/\*.*?\*/", "", (folder / name).read_text(), flags=re.S)
        assert "evil" not in code and "stdio" not in code


def test_a_model_over_the_bounds_is_refused_in_one_line(tmp_path, capsys, tiny_data_dir):
    int8 = int8_of(tmp_path / "run", activation="relu", pool="max")
    with pytest.raises(ConfigError, match="bytes of stack .* over the bound of 1,000"):
        write_c(int8, tmp_path / "c", max_stack_bytes=1000)
    with pytest.raises(ConfigError, match="bytes of flash, over the bound of 2,000"):
        write_c(int8, tmp_path / "c", max_flash_bytes=2000)
    assert not (tmp_path / "c").exists()
    code = main(["export", str(tmp_path / "run"), "--format", "c", "--max-stack-bytes", "1000", "--data-dir",
                 str(tiny_data_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "--max-stack-bytes" in err and err.count("\n") == 1


def test_a_missing_compiler_is_one_line_and_the_files_are_still_written(tmp_path, capsys, monkeypatch,
                                                                        tiny_data_dir):
    trained(tmp_path / "run", activation="relu", pool="max")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(CompilerMissing, match="no C compiler found"):
        compile_c(tmp_path, tmp_path)
    code = main(["export", str(tmp_path / "run"), "--format", "c", "--data-dir", str(tiny_data_dir)])
    captured = capsys.readouterr()
    assert code == 0 and captured.err.count("\n") == 1 and "no C compiler found" in captured.err
    assert all((tmp_path / "run" / "c" / name).is_file() for name in FILES)


def test_a_compile_failure_is_reported_with_the_compilers_words(tmp_path, monkeypatch):
    require_compiler()
    folder = write_c(int8_of(tmp_path / "run", activation="relu", pool="max"), tmp_path / "c")
    (folder / "lenet_model.c").write_text((folder / "lenet_model.c").read_text() + "\nint broken(void) { return x; }\n")
    with pytest.raises(RunError, match="did not compile.*x"):
        compile_c(folder, tmp_path)


def test_cli_export_c_checks_every_score(tmp_path, capsys, tiny_data_dir):
    require_compiler()
    trained(tmp_path / "run", activation="elu", pool="avg", batch_norm=True)
    code = main(["export", str(tmp_path / "run"), "--format", "c", "--data-dir", str(tiny_data_dir),
                 "--check-images", "150"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "every score identical on 150" in out.out and "quantised now" in out.out
    main(["quantize", str(tmp_path / "run"), "--data-dir", str(tiny_data_dir), "--calibration-images", "100"])
    capsys.readouterr()
    assert main(["export", str(tmp_path / "run"), "--format", "c", "--out", str(tmp_path / "board"),
                 "--data-dir", str(tiny_data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'board'}/" in out and "every score identical on 200" in out
    assert "quantised now" not in out  # the run's model-int8.safetensors was used


@pytest.mark.slow
def test_real_fashion_mnist_d2l_in_c_and_int8_onnx_match_the_reference(tmp_path, capsys, real_data_dir):
    """A short d2l run on the real Fashion-MNIST, quantised; its C code gives every score of
    all 10,000 test images bit for bit, and onnxruntime classifies 99.9% of them alike."""
    require_compiler()
    from lenet.data.datasets import load_dataset
    from lenet.use.int8_file import load_int8
    from lenet.use.onnx_int8 import check_onnx_int8, write_int8_onnx

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see models_fixture: one thread trains fastest on the shared 2-core machine
    try:
        assert main(["train", "--preset", "d2l", "--data-dir", str(real_data_dir), "--epochs", "3", "--device", "cpu",
                     "--name", "d2l"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main(["quantize", "runs/d2l", "--data-dir", str(real_data_dir)]) == 0
    print(capsys.readouterr().out)
    int8 = load_int8("runs/d2l")
    assert abs(int8.info["ptq_accuracy"] - int8.info["float_accuracy"]) <= 0.01
    images = load_dataset("fashion-mnist", real_data_dir).test.images.numpy()
    c = check_c(write_c(int8, tmp_path / "c"), int8, images, "fashion-mnist test")
    onnx = check_onnx_int8(write_int8_onnx(int8, tmp_path / "model-int8.onnx"), int8, images, "fashion-mnist test")
    print(f"{c}\n{onnx}")
    assert c.images == c.identical == 10_000
    assert onnx.images == 10_000 and onnx.agree >= 9_990
    predicted, scores = run_c(compile_c(tmp_path / "c", tmp_path), images[:3], 10)
    assert np.array_equal(scores, int8.scores(torch.from_numpy(images[:3])).numpy())
