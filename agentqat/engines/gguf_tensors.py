"""Reading a GGUF file's tensors as the model's modules: gguf's tensor name map of the file's architecture, the row
order llama.cpp stores llama q/k weights in, and exact values through gguf.quants.dequantize."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch


class GgufNameError(ValueError):
    """A GGUF file's architecture or tensor names are not what the model's modules need."""


def field_value(reader, key: str):
    """Returns the contents of the GGUF key `key`, or None when the file has none."""
    field = reader.get_field(key)
    return field.contents() if field is not None else None


def arch_name_map(reader):
    """Returns (architecture name, gguf's tensor name map for it); GgufNameError for an unknown architecture."""
    import gguf

    arch = field_value(reader, gguf.Keys.General.ARCHITECTURE)
    blocks = field_value(reader, f"{arch}.block_count")
    model_arch = next((key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch), None)
    if model_arch is None or blocks is None:
        raise GgufNameError(f"the GGUF's architecture {arch!r} is unknown to gguf")
    return arch, gguf.get_tensor_name_map(model_arch, int(blocks))


def row_permutation(reader, arch: str, tensor_name: str, rows: int) -> torch.Tensor | None:
    """Returns the row order llama.cpp stores a llama q/k weight in (stored = original[order]; transformers undoes
    it on load), else None."""
    if arch != "llama" or not (".attn_q." in tensor_name or ".attn_k." in tensor_name):
        return None
    heads = int(field_value(reader, f"{arch}.attention.head_count"))
    if ".attn_k." in tensor_name:
        heads = int(field_value(reader, f"{arch}.attention.head_count_kv") or heads)
    return torch.arange(rows).reshape(heads, 2, rows // heads // 2).transpose(1, 2).reshape(rows)


def stored_values(tensor) -> torch.Tensor:
    """Returns a GGUF tensor's values as float32 [rows, columns] (gguf.quants.dequantize, as transformers reads)."""
    from gguf import quants

    values = quants.dequantize(tensor.data, tensor.tensor_type)
    return torch.from_numpy(np.array(values, dtype=np.float32)).reshape(-1, int(tensor.shape[0]))


def module_tensor_names(reader, module_names) -> dict[str, str]:
    """Returns each module's GGUF tensor name (`<name>.weight`); GgufNameError naming modules the file lacks."""
    arch, name_map = arch_name_map(reader)
    present = {tensor.name for tensor in reader.tensors}
    names, missing = {}, []
    for module in module_names:
        mapped = name_map.get_name(module)
        if mapped is None or f"{mapped}.weight" not in present:
            missing.append(module)
        else:
            names[module] = f"{mapped}.weight"
    if missing:
        raise GgufNameError(f"the GGUF ({arch}) has no tensor for {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    return names


def _model_order(reader, arch: str, tensor_name: str, stored: torch.Tensor) -> torch.Tensor:
    """Returns a tensor's rows in the model's own order (llama q/k un-permuted)."""
    order = row_permutation(reader, arch, tensor_name, stored.shape[0])
    if order is None:
        return stored
    original = torch.empty_like(stored)
    original[order] = stored
    return original


def module_raw(reader, module_names) -> dict[str, tuple[str, str, np.ndarray]]:
    """Returns each module's tensor name, GGML type name and raw bytes (uint8 [rows, bytes per row], in the model's
    row order)."""
    arch, _ = arch_name_map(reader)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    raw = {}
    for module, tensor_name in module_tensor_names(reader, module_names).items():
        tensor = tensors[tensor_name]
        rows = np.asarray(tensor.data).view(np.uint8).reshape(int(np.prod(tensor.shape[1:])), -1)
        ordered = _model_order(reader, arch, tensor_name, torch.from_numpy(rows.copy())).numpy()
        raw[module] = (tensor_name, tensor.tensor_type.name, ordered)
    return raw


def file_rows(reader, tensor_name: str, rows: np.ndarray) -> np.ndarray:
    """Returns a tensor's rows (in the model's order, as `module_raw` gives them) in the order the file stores."""
    arch, _ = arch_name_map(reader)
    order = row_permutation(reader, arch, tensor_name, rows.shape[0])
    return rows if order is None else rows[order.numpy()]


def module_values(reader, module_names) -> dict[str, torch.Tensor]:
    """Returns each module's weight as the file holds it, in the model's own row order (llama q/k un-permuted)."""
    arch, _ = arch_name_map(reader)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    values = {}
    for module, tensor_name in module_tensor_names(reader, module_names).items():
        values[module] = _model_order(reader, arch, tensor_name, stored_values(tensors[tensor_name])).contiguous()
    return values


def copy_fields(reader, writer, skipped: tuple[str, ...] = ()) -> None:
    """Copies `reader`'s key-values (the tokenizer included) to `writer`, but for the reader's own GGUF.* keys, the
    architecture (the writer adds it) and the keys in `skipped`."""
    import gguf

    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in (gguf.Keys.General.ARCHITECTURE, *skipped):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)


def dequantized_copy(source: Path, target: Path, factors: Mapping[str, tuple[np.ndarray | None, np.ndarray]] | None = None) -> Path:
    """Returns `target`: the GGUF `source` with every tensor dequantized to F32 by gguf.quants (the values
    transformers loads from it) and its key-values, tokenizer included, as they are. `factors` maps tensor names to
    (row factors or None, column factors) that multiply the tensor's stored values (a 1-D tensor's by the columns')."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    staging = target.with_name(target.name + ".tmp")
    writer = gguf.GGUFWriter(str(staging), field_value(reader, gguf.Keys.General.ARCHITECTURE))
    copy_fields(reader, writer, (gguf.Keys.General.FILE_TYPE,))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for tensor in reader.tensors:
        values = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        rows, columns = (factors or {}).get(tensor.name, (None, None))
        if columns is not None:
            values = values * columns.astype(np.float32)
        if rows is not None:
            values = values * rows.astype(np.float32)[:, None]
        writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    staging.replace(target)
    return target
