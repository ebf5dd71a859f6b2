"""Top-k block-sparse attention for the local softmax window (Hybrid Forcing), as Pallas GPU kernels."""
from kernels.block_sparse.api import IMPLS, UnsupportedError, block_sparse_attention, check_supported, on_hopper
from kernels.block_sparse.reference import dense_mask, reference_attention
from kernels.block_sparse.selection import (BLOCK, SparsePlan, block_scores, inverse_table, make_plan,
                                            num_topk_blocks, select_blocks, select_blocks_numpy)
