"""The base GGUF of a model that `agentqat fold-awq` wrote: the base GGUF of the model it was folded from, with the
fold's scales applied in the file (`agentqat.quant.awq_fold`). Each group's source is divided by s (a norm's values,
or a linear layer's rows) and its consumers' columns are multiplied by s. A file stores what its norms multiply by
(Gemma's 1 + w included), and llama's q/k row order leaves columns alone, so the one rule holds for every
architecture gguf can name; llama.cpp's converter, which does not know every tokenizer, is not needed.

    DIR/awq-fold.json            the fold: the source model, the type, every group's source, consumers and alpha
    DIR/awq-scales.safetensors   the scales s of every group folded, by source
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from agentqat.engines.gguf_tensors import GgufNameError, arch_name_map, dequantized_copy, row_permutation

FOLD_RECORD = "awq-fold.json"
FOLD_SCALES = "awq-scales.safetensors"


def fold_record(directory: Path | None) -> dict | None:
    """Returns the fold record of a model directory `agentqat fold-awq` wrote, None for any other model."""
    path = directory / FOLD_RECORD if directory is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def fold_factors(reader, record: dict, scales: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """Returns, per tensor of the unfolded file `reader`, the (row, column) factors that fold `scales` into it."""
    arch, name_map = arch_name_map(reader)
    shapes = {tensor.name: tuple(int(n) for n in reversed(tensor.shape)) for tensor in reader.tensors}
    factors: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}

    def tensor_name(module: str) -> str:
        mapped = name_map.get_name(module)
        if mapped is None or f"{mapped}.weight" not in shapes:
            raise GgufNameError(f"the GGUF ({arch}) has no tensor for {module}")
        return f"{mapped}.weight"

    def multiply(name: str, rows: np.ndarray | None, columns: np.ndarray | None) -> None:
        old_rows, old_columns = factors.get(name, (None, np.ones(shapes[name][-1])))
        if rows is not None:
            order = row_permutation(reader, arch, name, len(rows))
            rows = rows if order is None else rows[order.numpy()]
            rows = rows if old_rows is None else old_rows * rows
        factors[name] = (rows if rows is not None else old_rows, old_columns * (columns if columns is not None else 1.0))

    for group in record["groups"]:
        s = scales.get(group["source"])
        if s is None:
            continue
        source = tensor_name(group["source"])
        if len(shapes[source]) == 1:
            multiply(source, None, 1.0 / s)
        else:
            multiply(source, 1.0 / s, None)
        for consumer in group["consumers"]:
            multiply(tensor_name(consumer), None, s)
    return factors


def write_folded_base(directory: Path, source_base: Path, target: Path) -> Path:
    """Returns `target`: `source_base` (the unfolded model's base GGUF) with the fold of `directory` applied, F32."""
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    record = fold_record(directory)
    if record is None:
        raise ValueError(f"{directory} holds no {FOLD_RECORD}")
    scales = {name: values.astype(np.float64) for name, values in load_file(str(directory / FOLD_SCALES)).items()}
    return dequantized_copy(source_base, target, fold_factors(GGUFReader(str(source_base)), record, scales))
