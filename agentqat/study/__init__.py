"""The evaluation side of a comparison: final winners re-evaluated on unseen text (`unseen`) and the statistics
that compare search arms (`stats`, pure numpy/scipy)."""
