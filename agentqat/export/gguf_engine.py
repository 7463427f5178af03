"""GGUF export of an [engine] arena's strategy: llama.cpp's own llama-quantize writes the mix, and every tensor is
checked to be byte for byte the one the arena scored.

- Each linear module's GGML type comes from its config (a GGUF format with rounding imatrix or gptq, or F16 for 16 bits);
  the most common type is llama-quantize's type argument, the others are `--tensor-type` overrides, the embedding
  takes the arena's type, all from the unquantized base GGUF with the arena's importance matrix (`--pure`: no
  recipe of llama.cpp's own changes a type).
- llama-quantize is deterministic: each tensor's bytes must equal those in the level file the arena read (the
  same tool, imatrix and type made both). A difference is an error, never a silently different file.
- Some modules have blocks of their own, found inside their GGML type by agentqat: a polish trained them (agentqat
  polish on an [engine] arena) or GPTQ rounded them (rounding gptq, `agentqat.quant.ggml_gptq`). Those tensors are
  overwritten in place with their blocks (same type, same bytes) and read back.
- Beside model.gguf: `llama-quantize.sh`, the same command with the file names a user has (base GGUF, the
  imatrix copied as imatrix.gguf), to rebuild the file with their own llama.cpp.
"""

from __future__ import annotations

import shlex
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from agentqat.engines.ggml_blocks import GgmlBlocks, encode
from agentqat.engines.gguf_tensors import file_rows, module_tensor_names
from agentqat.engines.levels import EngineFiles
from agentqat.engines.llama_cpp import quantize, quantize_command
from agentqat.export.base import ExportError, ExportSource
from agentqat.export.gguf_types import in_own_blocks
from agentqat.quant.ggml_engine import ENGINE_TYPE_OF_FORMAT, is_engine_made

FORMAT = "gguf"
GGUF_FILE = "model.gguf"
IMATRIX_FILE = "imatrix.gguf"
COMMAND_FILE = "llama-quantize.sh"
EMBEDDING_TENSORS = ("token_embd.weight", "output.weight")


def module_types(source: ExportSource) -> dict[str, str]:
    """Returns each linear module's GGML type name; ExportError naming modules llama-quantize did not make."""
    types, problems = {}, []
    for name, module in source.modules.items():
        weight = module.config.weight
        if weight.bits == 16:
            types[name] = "F16"
        elif is_engine_made(weight) or in_own_blocks(module.config):
            types[name] = ENGINE_TYPE_OF_FORMAT[weight.format].type_name
        else:
            problems.append(name)
    if problems:
        raise ExportError(FORMAT, "an [engine] arena's GGUF holds GGML types (rounding imatrix or gptq) or F16 only",
                          problems, "use the arena's ladder levels (agentqat validate --deploy gguf)")  # fmt: skip
    return types


def _raw(tensor) -> np.ndarray:
    return np.asarray(tensor.data).view(np.uint8).reshape(-1)


def _check_bytes(written: Path, expected: dict[str, Path]) -> None:
    """Raises ExportError naming each tensor whose bytes in `written` differ from those in its level file."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(written)).tensors}
    readers: dict[Path, dict] = {}
    differing = []
    for tensor_name, level in expected.items():
        if level not in readers:
            readers[level] = {t.name: t for t in GGUFReader(str(level)).tensors}
        want = readers[level][tensor_name]
        have = tensors[tensor_name]
        if have.tensor_type != want.tensor_type or not np.array_equal(_raw(have), _raw(want)):
            differing.append(tensor_name)
    if differing:
        raise ExportError(FORMAT, "llama-quantize wrote other bytes than the arena scored", differing,
                          "rebuild the level database (the imatrix or llama.cpp changed)")  # fmt: skip


def export_engine_gguf(source: ExportSource, out: Path) -> None:
    """Writes `out`/model.gguf with llama-quantize and the command that rebuilds it (see the module docstring); the
    modules with blocks of their own (a polish's, GPTQ's) take them."""
    polished = {name: module.blocks for name, module in source.modules.items() if module.blocks is not None}
    polished |= source.engine.head
    differing = [name for name, module in source.modules.items() if name in polished and not torch.equal(polished[name].values(), module.quantized)]
    if differing:
        raise ExportError(FORMAT, "their blocks do not hold the weights the arena scored", differing, "rebuild the level database")
    write_mix(source.engine, module_types(source), out, polished)


def _write_polished(target: Path, tensor_names: Mapping[str, str], polished: Mapping[str, GgmlBlocks]) -> None:
    """Overwrites the polished modules' tensors in `target` with their trained blocks (same type, same size), then
    reads them back; ExportError where llama-quantize stored another type or the bytes did not land."""
    from gguf import GGUFReader

    reader = GGUFReader(str(target))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    rows = {name: file_rows(reader, tensor_names[name], encode(blocks)) for name, blocks in polished.items()}
    other = [name for name, blocks in polished.items() if tensors[tensor_names[name]].tensor_type.name != blocks.type_name]
    if other:
        raise ExportError(FORMAT, "these blocks are of other GGML types than llama-quantize stored", other, "polish or export the strategy again")
    offsets = {name: int(tensors[tensor_names[name]].data_offset) for name in polished}
    del reader, tensors
    with open(target, "r+b") as handle:
        for name, offset in offsets.items():
            handle.seek(offset)
            handle.write(rows[name].tobytes())
    written = {tensor.name: tensor for tensor in GGUFReader(str(target)).tensors}
    differing = [name for name in polished if not np.array_equal(_raw(written[tensor_names[name]]), rows[name].reshape(-1))]
    if differing:
        raise ExportError(FORMAT, "these blocks did not read back from the file", differing, "check the disk and export again")


def write_mix(files: EngineFiles, types: dict[str, str], out: Path, polished: Mapping[str, GgmlBlocks] | None = None) -> Path:
    """Returns `out`/model.gguf: the modules at `types` (module name -> GGML type) and the rest as the arena's files
    have them, written by llama-quantize, checked byte for byte, with imatrix.gguf and llama-quantize.sh beside;
    the modules in `polished` then take those blocks (the script rebuilds the mix before polishing)."""
    from gguf import GGUFReader

    polished = polished or {}
    tensor_names = module_tensor_names(GGUFReader(str(files.base)), [*types, *polished])
    by_tensor = {tensor_names[name]: type_name for name, type_name in types.items()}
    trained = {tensor_names[name] for name in polished}
    main_type = Counter(by_tensor.values()).most_common(1)[0][0]
    overrides = {name: kind for name, kind in by_tensor.items() if kind != main_type}
    out.mkdir(parents=True, exist_ok=True)
    target = out / GGUF_FILE
    quantize(files.engine, files.base, target, main_type, files.imatrix, overrides, pure=True, embedding_type=files.embedding)
    expected = {name: files.levels[kind] for name, kind in by_tensor.items() if kind in files.levels and name not in trained}
    base_tensors = {t.name for t in GGUFReader(str(files.base)).tensors}
    expected |= {name: files.levels[files.embedding] for name in EMBEDDING_TENSORS
                 if name in base_tensors and files.embedding in files.levels and name not in trained}  # fmt: skip
    try:
        _check_bytes(target, expected)
        _write_polished(target, tensor_names, polished)
    except ExportError:
        target.rename(out / f"{GGUF_FILE}.differs")
        raise
    target.with_suffix(".log").unlink(missing_ok=True)
    shutil.copyfile(files.imatrix, out / IMATRIX_FILE)
    command = quantize_command("llama-quantize", files.base.name, GGUF_FILE, main_type, IMATRIX_FILE, overrides, True, files.embedding)
    (out / COMMAND_FILE).write_text(
        "#!/bin/sh\n# Rebuilds model.gguf with llama.cpp's own llama-quantize from the unquantized model "
        f"({files.base.name}, llama.cpp's convert_hf_to_gguf.py --outtype f32) and imatrix.gguf (the arena's calibration split).\n"
        + (f"# agentqat then wrote blocks of its own (a polish's or GPTQ's) into {len(polished)} tensors: this command rebuilds "
           "the mix with llama.cpp's rounding there, not model.gguf.\n" if polished else "")
        + shlex.join(command) + "\n"
    )
    return target
