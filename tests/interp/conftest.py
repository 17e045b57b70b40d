"""Shared builders for tests/interp: a tiny Llama with an answer planted in one block's MLP."""
import pytest
import torch

from cotdsl.tiny import tiny_model


def planted_llama(tok, block, push=6.0, layers=3):
    """`layers`-block Llama with attention and MLP outputs zeroed except block `block`'s MLP, which
    on the cue token (id 10) writes `push` along answer 12's unembedding and nothing along answer
    13's; the cue embeds with a large constant coordinate so the RMS norm is nearly fixed. With
    push=0 nothing writes at all: two such models differ only in that block's down projection."""
    model = tiny_model(tok, arch="llama", layers=layers, d_model=64, heads=4)
    base = model.model
    emb = base.embed_tokens.weight  # tied with lm_head
    with torch.no_grad():
        for blk in base.layers:
            for lin in (blk.self_attn.o_proj, blk.mlp.gate_proj, blk.mlp.up_proj, blk.mlp.down_proj):
                lin.weight.zero_()
        emb[10] = 0.0
        emb[10, 0], emb[10, 63] = 4.0, 100.0
        for a in (12, 13):
            emb[a] = 0.0
        emb[12, 20], emb[13, 21] = 4.0, 4.0
        mlp = base.layers[block].mlp
        mlp.gate_proj.weight[0, 0] = 5.0
        mlp.up_proj.weight[0, 0] = 1.0
        mlp.down_proj.weight[20, 0] = push
    return model


@pytest.fixture
def planted():
    return planted_llama


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: on the shared 2-core machine two OpenMP threads contend
    with other jobs and tiny-model forwards get ~10x slower. Restores the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
