"""GGUF export: the source GGUF file rewritten with each linear module in the GGML type that holds the arena's
weight bit for bit (`agentqat.export.gguf_types` says which strategies map), everything else kept as it was.

- Metadata and tokenizer key-values are copied from the source file; general.file_type becomes the type holding
  most linear weights; `agentqat.strategy`, `agentqat.figures` (JSON) and `agentqat.effective_bits` are added.
- Linear weights that map are written in their type and read back with gguf.quants.dequantize, which is how
  transformers loads them: the values must equal the arena's weight exactly, or the export fails.
- 16-bit linear weights are written as F16 where F16 holds them exactly, else as the source's own tensor.
- Other tensors (embeddings, norms, an untied output head) keep the source's type and bytes.
- Names follow gguf's tensor name map of the file's architecture; llama's q/k rows are stored in llama.cpp's
  permuted order (transformers undoes it on load). Every linear module's base weight must equal the source's
  tensor in that layout: this checks the names and the permutation, and that the model came from this file.

A model that was not loaded from a GGUF file has no source to copy: GGUF export refuses it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from agentqat.engines.ggml_blocks import encode
from agentqat.engines.gguf_tensors import GgufNameError, arch_name_map, copy_fields, field_value, row_permutation, stored_values
from agentqat.export.base import ExportError, ExportModule, ExportSource, register_exporter
from agentqat.export.gguf_engine import export_engine_gguf
from agentqat.export.gguf_types import ENGINE_MADE, GGUF, OWN_BLOCKS, PACKED, ggml_type, gguf_problem, packed_blocks
from agentqat.quant.ggml import ggml_blocks, ggml_values

FORMAT = GGUF
GGUF_FILE = "model.gguf"
SHOWN_MODULES = 6  # module names an error lists per reason


def _group_problems(problems: dict[str, str]) -> str:
    """Returns one line per reason, naming its modules (the first SHOWN_MODULES of them)."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in problems.items():
        by_reason.setdefault(reason, []).append(name)
    lines = []
    for reason, names in by_reason.items():
        more = f" and {len(names) - SHOWN_MODULES} more" if len(names) > SHOWN_MODULES else ""
        lines.append(f"{', '.join(names[:SHOWN_MODULES])}{more}: {reason}")
    return "; ".join(lines)


def check_mappable(modules: dict[str, ExportModule]) -> None:
    """Raises ExportError naming every module whose config no GGML type holds, and why."""
    problems = {name: problem for name, module in modules.items() if (problem := gguf_problem(module.config))}
    if problems:
        raise ExportError(FORMAT, _group_problems(problems), list(problems), "change those modules' rules as said, or export --format fake-quant")


def _arch_name_map(reader):
    """Returns (architecture name, gguf's tensor name map for it); ExportError for an unknown architecture."""
    try:
        return arch_name_map(reader)
    except GgufNameError as error:
        raise ExportError(FORMAT, f"{error}", [], "export --format fake-quant") from None


def _linear_tensor(module: ExportModule, source, order: torch.Tensor | None):
    """Returns (array, GGML type name) of one linear module as the file stores it; raises ExportError when the
    stored values would differ from the arena's or the base weight is not the source's tensor."""
    original, quantized = module.original.to(torch.float32), module.quantized.to(torch.float32)
    if order is not None:
        original, quantized = original[order], quantized[order]
    if not torch.equal(stored_values(source), original):
        raise ExportError(FORMAT, f"its base weight is not the source GGUF's {source.name}", [module.name],
                          "export the model directory converted from that GGUF file (agentqat converts it on first use)")  # fmt: skip
    kind = ggml_type(module.config)
    if kind is None:
        half = original.to(torch.float16)
        if torch.equal(half.to(torch.float32), original):
            return half.numpy(), "F16"
        return np.asarray(source.data), source.tensor_type.name
    type_name, how = kind
    if how == ENGINE_MADE:
        raise ExportError(FORMAT, f"{type_name} with an importance matrix is made by llama-quantize", [module.name],
                          "export it on its [engine] arena (--arena), whose files hold those bytes")  # fmt: skip
    try:
        if how == OWN_BLOCKS:
            if module.blocks is None:
                raise ValueError("the export source carries none")
            own = encode(module.blocks)
            blocks = own[order.numpy()] if order is not None else own
        else:
            blocks = packed_blocks(quantized, type_name) if how == PACKED else ggml_blocks(original, type_name)
    except ValueError as error:
        raise ExportError(FORMAT, f"its weight is not {type_name} blocks ({error})", [module.name], "export --format fake-quant")
    stored = ggml_values(blocks, type_name).reshape(quantized.shape)
    if not torch.equal(stored, quantized):
        differing = int((stored != quantized).sum())
        raise ExportError(FORMAT, f"{type_name} holds {differing} of {quantized.numel()} weights differently from the arena",
                          [module.name], "export --format fake-quant")  # fmt: skip
    return blocks, type_name


def _copy_metadata(reader, writer, source: ExportSource, linear_types: Counter, linear_bits: float) -> None:
    """Copies the source's key-values (tokenizer included) and adds the file type and agentqat's records (the
    strategy, its figures, its effective bits and the bits per weight the file spends on linear weights)."""
    import gguf

    copy_fields(reader, writer, (gguf.Keys.General.FILE_TYPE,))  # the file type is set below
    main_type = linear_types.most_common(1)[0][0]
    file_type = {"F32": "ALL_F32"}.get(main_type, f"MOSTLY_{main_type}")
    if file_type in gguf.LlamaFileType.__members__:
        writer.add_file_type(gguf.LlamaFileType[file_type])
    elif (kept := field_value(reader, gguf.Keys.General.FILE_TYPE)) is not None:
        writer.add_file_type(int(kept))
    writer.add_string("agentqat.strategy", json.dumps(source.document, sort_keys=True))
    writer.add_string("agentqat.figures", json.dumps(source.figures, sort_keys=True, default=str))
    writer.add_float32("agentqat.effective_bits", float(source.effective_bits))
    writer.add_float32("agentqat.linear_file_bits", linear_bits)


@register_exporter(FORMAT)
def export_gguf(source: ExportSource, out: Path) -> None:
    """Writes `out`/model.gguf: the source GGUF with the strategy's linear weights (see the module docstring)."""
    import gguf

    if source.engine is not None:
        return export_engine_gguf(source, out)
    if source.gguf_path is None:
        raise ExportError(
            FORMAT, "GGUF export needs a model loaded from a GGUF file: it copies that file's metadata, tokenizer and "
            "other tensors, and this model has none", [],
            "run with --model pointing at a .gguf file (or a built-in model), or export --format fake-quant",
        )
    check_mappable(source.modules)
    reader = gguf.GGUFReader(source.gguf_path)
    arch, name_map = _arch_name_map(reader)
    by_tensor = {}
    for name, module in source.modules.items():
        tensor_name = name_map.get_name(name)
        if tensor_name is None:
            raise ExportError(FORMAT, f"no GGUF tensor name for it in architecture {arch}", [name], "export --format fake-quant")
        by_tensor[f"{tensor_name}.weight"] = module
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    missing = sorted(module.name for name, module in by_tensor.items() if name not in tensors)
    if missing:
        raise ExportError(FORMAT, "the source GGUF has no tensor for them", list(missing), "export the model converted from it")

    stored, linear_types, linear_bytes = {}, Counter(), 0
    for tensor_name, module in by_tensor.items():
        order = row_permutation(reader, arch, tensor_name, module.original.shape[0])
        array, type_name = _linear_tensor(module, tensors[tensor_name], order)
        stored[tensor_name] = (array, type_name)
        linear_types[type_name] += module.original.numel()
        linear_bytes += array.nbytes

    out.mkdir(parents=True, exist_ok=True)
    target, partial = out / GGUF_FILE, out / f"{GGUF_FILE}.partial"
    writer = gguf.GGUFWriter(partial, arch)
    try:
        _copy_metadata(reader, writer, source, linear_types, 8 * linear_bytes / sum(linear_types.values()))
        for tensor in reader.tensors:
            if tensor.name in stored:
                array, type_name = stored[tensor.name]
                writer.add_tensor(tensor.name, array, raw_dtype=gguf.GGMLQuantizationType[type_name])
            else:
                writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type, tensor_endianess=reader.endianess)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    partial.replace(target)  # a failed write leaves model.gguf.partial, never a model.gguf

