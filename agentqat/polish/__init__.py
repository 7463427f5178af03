"""Block-wise quantization-aware training of a strategy (EfficientQAT's Block-AP) with a bit-width curriculum and
learnable power-of-two scales.

    ste.py         QatLinear: a linear layer on a learnable int grid, rounding by the straight-through estimator
    blocks.py      the first block's inputs, a block run, a block's quantized or trainable copy
    curriculum.py  the widths a block trains at (4 > 3 > 2), convergence
    train.py       PolishSettings, polish_model: every block trained in turn, one in memory at a time
"""

from agentqat.polish.ste import PolishedWeight, QatLinear, on_grid, round_ste
from agentqat.polish.train import BlockReport, Polished, PolishSettings, block_order, polish_model

__all__ = ["BlockReport", "Polished", "PolishSettings", "PolishedWeight", "QatLinear", "block_order", "on_grid", "polish_model", "round_ste"]
