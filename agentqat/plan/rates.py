"""Measured rates (seconds per unit of work) that the plan multiplies, and the labelled assumption that turns
this CPU's rates into a CUDA device's.

The rates are measured by `bench/rates.py` on one machine and committed as `rates-cpu.json` beside this module.
No GPU has been measured: a CUDA plan divides the compute rates by an assumed throughput ratio, an A100-class
GPU's published bf16 peak at an assumed utilisation against this CPU's measured forward throughput, and says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from agentqat.errors import UserError

RATES_FILE = Path(__file__).with_name("rates-cpu.json")

# Assumed, not measured: NVIDIA's datasheet bf16 dense peak of the A100 (312 TFLOP/s; the H100 SXM's is 989) and
# a sustained share of it for batch-4 forward passes of 512-token windows.
ASSUMED_GPU = "an A100-class GPU"
ASSUMED_GPU_PEAK_FLOPS = 312e12
ASSUMED_GPU_UTILISATION = 0.4


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of work on one worker; `source` says where they come from (measured or assumed)."""

    source: str
    threads: int
    forward_s_per_token_param: float  # a match's evaluation (forward, KL against the references) per token x forward parameter
    calibration_s_per_token_param: float  # forward and Hessian accumulation, per token x (forward parameters + Hessian entries)
    rtn_s_per_weight: float  # round-to-nearest (and the other one-pass methods) per weight
    gptq_s_per_column: float  # GPTQ, a + b x out x in + c x out x in^2 per module (in = columns): a
    gptq_s_per_weight: float  # b
    gptq_s_per_weight_column: float  # c
    level_write_s_per_byte: float  # a level file written to disk (safetensors, fsync)
    level_read_s_per_byte: float  # a module read back from a level file on disk (not in the page cache)

    @property
    def forward_flops(self) -> float:
        """Returns the floating-point operations per second the forward rate means (2 per multiply-add)."""
        return 2 / self.forward_s_per_token_param

    def gptq_seconds(self, out_features: int, in_features: int) -> float:
        """Returns the seconds GPTQ takes on one module of this shape."""
        weights = out_features * in_features
        return self.gptq_s_per_column * in_features + self.gptq_s_per_weight * weights + self.gptq_s_per_weight_column * weights * in_features


def load_rates(path: Path = RATES_FILE) -> tuple[Rates, dict]:
    """Returns the rates in a JSON file written by bench/rates.py and the file's whole document (machine, date)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        values = {field.name: document["rates"][field.name] for field in fields(Rates) if field.name not in ("source", "threads")}
        source = f"measured on {document['machine']} with {document['threads']} thread(s), {document['measured']}"
        return Rates(source=source, threads=int(document["threads"]), **{k: float(v) for k, v in values.items()}), document
    except FileNotFoundError:
        raise UserError(f"rates file {path} does not exist", "measure this machine's rates with bench/rates.py") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"rates file {path} is unreadable or incomplete ({type(error).__name__}: {error})", "rewrite it with bench/rates.py") from None


def assumed_speedup(rates: Rates) -> float:
    """Returns the assumed ratio of an A100-class GPU's sustained bf16 throughput to the measured CPU forward's."""
    return ASSUMED_GPU_PEAK_FLOPS * ASSUMED_GPU_UTILISATION / rates.forward_flops


def cuda_rates(rates: Rates) -> Rates:
    """Returns `rates` on an assumed A100-class GPU: compute divided by `assumed_speedup`; GPTQ's per-column step
    (Python and kernel launches) and the level files' disk rates unchanged."""
    speedup = assumed_speedup(rates)
    source = (
        f"ASSUMED, not measured: {ASSUMED_GPU} at {ASSUMED_GPU_UTILISATION:.0%} of its {ASSUMED_GPU_PEAK_FLOPS / 1e12:.0f} "
        f"TFLOP/s bf16 peak, {speedup:,.0f}x the forward throughput {rates.source}"
    )
    scaled = ("forward_s_per_token_param", "calibration_s_per_token_param", "rtn_s_per_weight", "gptq_s_per_weight", "gptq_s_per_weight_column")
    return replace(rates, source=source, **{name: getattr(rates, name) / speedup for name in scaled})
