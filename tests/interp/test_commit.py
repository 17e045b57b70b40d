"""interp/commit.py: commit layers on hand-made tensors and on a model with planted answers."""
import pytest
import torch

from cotdsl.tiny import tiny_model, train_tokenizer
from interp.commit import commit_layers, summarize, top1_mask
from interp.lens import logit_lens

CUE, ANS = [10, 11], [12, 13]  # cue token i asks for answer token ANS[i]
ACT = 0.425  # activation of the planted MLP unit on a cue (see planted_model)


def cp(rows):
    """choice_probs [1, L+1, 2] from a list of P(choice 0) per layer."""
    p = torch.tensor(rows, dtype=torch.float)
    return torch.stack([p, 1 - p], -1).unsqueeze(0)


@pytest.mark.parametrize("rows,want", [
    ([0.2, 0.4, 0.6, 0.7], 2),
    ([0.9, 0.8, 0.7, 0.6], 0),
    ([0.9, 0.2, 0.8, 0.9], 2),       # won, lost, won again: commitment is the last switch
    ([0.9, 0.9, 0.9, 0.3], -1),      # lost at the last layer: never committed
    ([0.2, 0.5, 0.5, 0.5], -1),      # ties are not wins
    ([0.1, 0.1, 0.1, 0.6], 3),
])
def test_commit_layer_rules(rows, want):
    assert commit_layers(cp(rows), torch.tensor([0])).tolist() == [want]


def test_commit_batch_gold_column_and_summary():
    probs = torch.cat([cp([0.2, 0.6, 0.7]), cp([0.8, 0.3, 0.2]), cp([0.6, 0.6, 0.4])])
    gold = torch.tensor([0, 1, 0])
    assert commit_layers(probs, gold).tolist() == [1, 1, -1]
    assert top1_mask(probs, gold).tolist() == [[False, True, True], [False, True, True],
                                                [True, True, False]]
    s = summarize(probs, gold)
    assert s["commit_layers"] == [1, 1, -1] and s["n"] == 3
    assert s["commit_mean"] == 1.0 and s["commit_median"] == 1.0
    assert s["share_committed"] == pytest.approx(2 / 3)
    assert s["mean_choice_p_gold"] == pytest.approx([(0.2 + 0.2 + 0.6) / 3, (0.6 + 0.7 + 0.6) / 3,
                                                     (0.7 + 0.8 + 0.4) / 3])
    none = summarize(cp([0.1, 0.2]), torch.tensor([0]))
    assert none["commit_mean"] is None and none["share_committed"] == 0.0


def test_commit_bad_input():
    with pytest.raises(ValueError):
        commit_layers(torch.rand(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        commit_layers(torch.rand(2, 3, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError):
        commit_layers(torch.rand(2, 3, 2))


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 3, vocab_size=300)


def planted_model(tok, writes):
    """4-block Llama whose blocks write nothing except planted answer pushes.

    Attention outputs and all MLPs are zeroed; block b's MLP, when it sees cue i at a position,
    adds writes[b] = (d_gold, d_wrong) to the residual's coordinates of answer i / the other
    answer. Cue i embeds as 4*e_i + 2*e_(wrong answer) + 100*e_63: the big constant coordinate
    keeps the RMS norm (and so the MLP unit's activation, ~ACT) nearly fixed, and the wrong
    answer leads by 2 before any block writes. Answer j embeds (= unembeds, tied) as 4*e_(10+j),
    so at every lens row the choice order is the order of the residual's coordinates 10 and 11.
    """
    model = tiny_model(tok, arch="llama", layers=4, d_model=64, heads=4)
    emb = model.model.embed_tokens.weight
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()  # tied: unembedding = embedding
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
            for lin in (block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
                lin.weight.zero_()
            for i in (0, 1):
                block.mlp.gate_proj.weight[i, i] = 5.0
                block.mlp.up_proj.weight[i, i] = 1.0
        for i in (0, 1):
            emb[CUE[i]] = 0.0
            emb[CUE[i], i], emb[CUE[i], 10 + (1 - i)], emb[CUE[i], 63] = 4.0, 2.0, 100.0
            emb[ANS[i]] = 0.0
            emb[ANS[i], 10 + i] = 4.0
        for b, (d_gold, d_wrong) in writes.items():
            down = model.model.layers[b].mlp.down_proj.weight  # [d_model, intermediate]
            for i in (0, 1):
                down[10 + i, i] = d_gold / ACT
                down[10 + (1 - i), i] = d_wrong / ACT
    return model


def cue_batch(tok, B=6, T=9, seed=0):
    """Random prefixes ending in a cue, right-padded; target columns shuffled per example."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, len(tok), (B, T), generator=g)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids[mask == 0] = tok.pad_token_id
    cue = torch.randint(0, 2, (B,), generator=g)
    pos = lengths - 1
    ids[torch.arange(B), pos] = torch.tensor(CUE)[cue]
    flip = torch.randint(0, 2, (B,), generator=g)  # gold in column 0 or 1
    gold_tok, wrong_tok = torch.tensor(ANS)[cue], torch.tensor(ANS)[1 - cue]
    targets = torch.where(flip[:, None] == 0, torch.stack([gold_tok, wrong_tok], 1),
                          torch.stack([wrong_tok, gold_tok], 1))
    return ids, mask, pos, targets, flip


@pytest.mark.parametrize("block", [0, 1, 2, 3])
def test_answer_planted_in_block_k_commits_at_row_k_plus_1(tok, block):
    model = planted_model(tok, {block: (6.0, 0.0)})
    ids, mask, pos, tgt, gold = cue_batch(tok, seed=block)
    res = logit_lens(model, ids, mask, pos, tgt, gold)
    assert commit_layers(res).tolist() == [block + 1] * 6
    s = summarize(res)
    assert s["share_committed"] == 1.0 and s["commit_median"] == block + 1


def test_flip_flop_and_late_loss(tok):
    # gold wins after block 0, loses after block 1, wins for good after block 2 -> row 3.
    model = planted_model(tok, {0: (5.0, 0.0), 1: (0.0, 8.0), 2: (10.0, 0.0)})
    res = logit_lens(model, *cue_batch(tok, seed=7))
    assert commit_layers(res).tolist() == [3] * 6
    # gold wins after block 0 but the last block hands it back to the wrong answer -> never.
    model = planted_model(tok, {0: (6.0, 0.0), 3: (0.0, 10.0)})
    res = logit_lens(model, *cue_batch(tok, seed=8))
    assert commit_layers(res).tolist() == [-1] * 6
    assert summarize(res)["share_committed"] == 0.0


@pytest.mark.parametrize("block", [1, 3])
def test_whole_label_lens_commits_at_the_planted_block_too(tok, block):
    """label_lens on the same planted model (one-token labels: the answers) gives the same commit
    rows; summarize counts no ties."""
    from interp.lens import label_lens

    model = planted_model(tok, {block: (6.0, 0.0)})
    ids, mask, pos, tgt, gold = cue_batch(tok, seed=block)
    ctxs = [ids[b, :int(pos[b]) + 1].tolist() for b in range(len(ids))]
    res = label_lens(model, ctxs, [[[int(t)] for t in row] for row in tgt], gold)
    assert commit_layers(res).tolist() == [block + 1] * 6
    s = summarize(res)
    assert s["tied"] == 0 and s["commit_median"] == block + 1
    assert summarize(logit_lens(model, ids, mask, pos, tgt[:, [0, 0]], 0))["tied"] == 6  # a column twice
