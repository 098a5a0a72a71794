"""The CP Transformer: relative attention against a naive reference, causality,
per-field losses, configs and checkpoints.

The reference attention below builds the full relative-logit tensor
R[i, j] = q_i . E[clip(i - j)] explicitly, so it shares no code with the skewing trick.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from cwcompose.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from cwcompose.attention import SkewScratch, causal_relative_attention, skewed_view
from cwcompose.model import CPTransformer, KVCache, ModelConfig, RelativeSelfAttention, skew, total_loss
from cwcompose.tokenizer import FIELDS, IGNORE, PAD, CPTokenizer, TokenizerConfig

TINY = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0, max_relative_distance=8,
            embed_widths={f: 8 for f in FIELDS})


def tiny_config(**changes) -> ModelConfig:
    return ModelConfig(**{"vocab_sizes": CPTokenizer().vocab_sizes, **TINY, **changes})


def tiny_model(seed: int = 0, **changes) -> CPTransformer:
    torch.manual_seed(seed)
    return CPTransformer(tiny_config(**changes)).eval()


def random_words(model: CPTransformer, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length, fields) ids drawn uniformly from each field's whole vocabulary."""
    g = torch.Generator().manual_seed(seed)
    sizes = [model.config.vocab_sizes[f] for f in FIELDS]
    return torch.stack([torch.randint(n, (batch, length), generator=g) for n in sizes], dim=-1)


# ---------------------------------------------------------------- relative attention


def naive_relative_attention(attn: RelativeSelfAttention, x: torch.Tensor, lq: int) -> torch.Tensor:
    """Outputs for the last ``lq`` of the positions of ``x`` (B, Lk, D), written out in full."""
    b, lk, d = x.shape
    h, hd = attn.n_heads, attn.head_dim
    q, k, v = attn.qkv(x).split(d, dim=-1)
    q, k, v = (t.reshape(b, lk, h, hd).transpose(1, 2) for t in (q, k, v))
    q = q[:, :, lk - lq:]
    query_pos = torch.arange(lk - lq, lk)[:, None]
    key_pos = torch.arange(lk)[None, :]
    distance = (query_pos - key_pos).clamp(0, attn.relative.size(0) - 1)
    table = attn.relative[distance]  # (lq, lk, hd): one embedding per (query, key) pair
    relative = torch.einsum("bhid,ijd->bhij", q, table)
    logits = (q @ k.transpose(-1, -2) + relative) / math.sqrt(hd)
    logits = logits.masked_fill(key_pos > query_pos, float("-inf"))
    y = torch.softmax(logits, dim=-1) @ v
    return attn.out(y.transpose(1, 2).reshape(b, lq, d))


def attention_under_test(seed: int = 0) -> RelativeSelfAttention:
    torch.manual_seed(seed)
    attn = RelativeSelfAttention(tiny_config()).eval()
    # The default 0.02 init makes the relative term too small to catch an indexing error.
    with torch.no_grad():
        attn.relative.normal_()
    return attn


@pytest.mark.parametrize("length", [1, 2, 5, 8, 9, 20])
def test_relative_attention_matches_naive(length):
    attn = attention_under_test(length)
    x = torch.randn(3, length, 32)
    with torch.no_grad():
        got = attn(x)
        want = naive_relative_attention(attn, x, length)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_relative_attention_matches_naive_at_the_training_context():
    """A whole 1024-word window (the default context) with distances clipped at 512."""
    torch.manual_seed(5)
    attn = RelativeSelfAttention(tiny_config(max_relative_distance=512)).eval()
    with torch.no_grad():
        attn.relative.normal_()
        x = torch.randn(1, 1024, 32)
        got = attn(x)
        want = naive_relative_attention(attn, x, 1024)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_skewed_view_of_the_padded_block_is_skew_then_causal_mask():
    logits = torch.randn(2, 3, 37, 37)
    mask = torch.arange(37)[None, :] <= torch.arange(37)[:, None]
    padded = F.pad(logits, (0, 37), value=float("-inf"))
    torch.testing.assert_close(skewed_view(padded), skew(logits).masked_fill(~mask, float("-inf")))


@pytest.mark.parametrize("length", [1, 2, 7, 24])
def test_hand_written_attention_backward_passes_gradcheck(length):
    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(2, 3, length, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    table = torch.randn(length, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(causal_relative_attention, (q, k, v, table))


def test_reused_skew_buffers_give_what_fresh_ones_give():
    """Buffers kept from call to call (training) against new ones per call: outputs and every
    gradient equal, over calls of new inputs and of another length in between."""
    scratch = SkewScratch()
    for seed, length in enumerate([9, 9, 5, 9]):
        g = torch.Generator().manual_seed(seed)
        inputs = [torch.randn(2, 3, length, 4, generator=g) for _ in range(3)] + [torch.randn(length, 4, generator=g)]
        results = []
        for kept in (scratch, None):
            leaves = [t.clone().requires_grad_() for t in inputs]
            out = causal_relative_attention(*leaves, scratch=kept)
            out.backward(torch.ones_like(out))
            results.append([out.detach(), *(t.grad for t in leaves)])
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_hand_written_attention_gradients_equal_autograd_through_the_naive_reference():
    """The model's whole-window path against the written-out reference, forward and every gradient."""
    def outputs_and_grads(fn):
        attn = attention_under_test(3)
        x = torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y = fn(attn, x)
        y.backward(torch.ones_like(y))
        return [y, x.grad, attn.relative.grad, attn.qkv.weight.grad]

    got = outputs_and_grads(lambda attn, x: attn(x))
    want = outputs_and_grads(lambda attn, x: naive_relative_attention(attn, x, x.size(1)))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_configs_from_before_context_load_as_256_word_models():
    """v1 configs had no ``context``: they saw max_relative_distance words, with attention dropout."""
    old = tiny_config(max_relative_distance=256, dropout=0.1).to_dict()
    del old["context"], old["attention_dropout"]
    loaded = ModelConfig.from_dict(old)
    assert (loaded.context, loaded.max_relative_distance, loaded.attention_dropout) == (256, 256, 0.1)
    assert ModelConfig.from_dict(tiny_config().to_dict()) == tiny_config()


@pytest.mark.parametrize("prefix,lq", [(19, 1), (9, 3), (4, 4), (0, 6), (12, 8)])
def test_relative_attention_with_cache_matches_naive(prefix, lq):
    """Queries are the last Lq of Lk positions, keys/values come from a KV cache."""
    attn = attention_under_test(prefix * 31 + lq)
    x = torch.randn(2, prefix + lq, 32)
    cache = KVCache(1, 2, attn.n_heads, attn.head_dim, prefix + lq, torch.device("cpu"))
    with torch.no_grad():
        if prefix:
            attn(x[:, :prefix], cache, layer=0)
            cache.length += prefix  # CPTransformer.hidden advances the cache once per call
        got = attn(x[:, prefix:], cache, layer=0)
        want = naive_relative_attention(attn, x, lq)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_skew_places_each_distance_under_its_key():
    """Column c of the input holds distance Lk-1-c; after skewing, entry (i, j) holds
    the distance from query (Lk-Lq+i) to key j on and below the causal diagonal."""
    lq, lk = 3, 7
    by_distance = torch.arange(lk - 1, -1, -1, dtype=torch.float).expand(lq, lk)
    skewed = skew(by_distance)
    for i in range(lq):
        for j in range(lk - lq + i + 1):
            assert skewed[i, j] == lk - lq + i - j


def test_cached_decoding_matches_full_forward():
    model = tiny_model()
    words = random_words(model, 2, 20)
    cache = model.new_cache(batch=2, capacity=20)
    with torch.no_grad():
        full = model.hidden(words)
        steps = [model.hidden(words[:, :12], cache)] + [model.hidden(words[:, t:t + 1], cache) for t in range(12, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_cache_refuses_to_overflow():
    model = tiny_model()
    cache = model.new_cache(batch=1, capacity=4)
    with torch.no_grad():
        model.hidden(random_words(model, 1, 4), cache)
        with pytest.raises(RuntimeError, match="KV cache full"):
            model.hidden(random_words(model, 1, 1), cache)


# ---------------------------------------------------------------- the whole model


@pytest.mark.parametrize("t", [0, 7, 15])
def test_changing_a_word_changes_nothing_before_it(t):
    model = tiny_model()
    words = random_words(model, 2, 16)
    changed = words.clone()
    changed[:, t] = random_words(model, 2, 1, seed=1)[:, 0]
    assert not torch.equal(changed[:, t], words[:, t])
    with torch.no_grad():
        before, after = model(words), model(changed)
    for f in FIELDS:
        torch.testing.assert_close(after[f][:, :t], before[f][:, :t], atol=0, rtol=0)
        assert not torch.allclose(after[f][:, t], before[f][:, t])


def test_runs_beyond_max_relative_distance():
    """No absolute positions: a window 4x the clipping distance still gives finite logits."""
    model = tiny_model()
    with torch.no_grad():
        logits = model(random_words(model, 1, 4 * model.config.max_relative_distance))
    assert all(torch.isfinite(v).all() for v in logits.values())


def test_field_logits_follow_the_given_family():
    """Non-family heads are conditioned on the family: teacher-forced in training."""
    model = tiny_model()
    words = random_words(model, 1, 6)
    with torch.no_grad():
        h = model.hidden(words)
        metric = model.field_logits(h, torch.full((1, 6), 2), ("pitch",))["pitch"]
        note = model.field_logits(h, torch.full((1, 6), 3), ("pitch",))["pitch"]
    assert not torch.allclose(metric, note)


def test_per_field_losses_mask_pad_and_ignore(small_dataset):
    from cwcompose.data import TokenDataset

    model = tiny_model()
    data = TokenDataset.load(small_dataset, "train")
    window = data.fixed_windows(2, 25)
    words, targets = window[:, :-1], window[:, 1:].clone()
    targets[:, 18:] = PAD  # as after a song's end
    with torch.no_grad():
        logits, losses = model(words, targets)
        _, truncated = model(words[:, :18], targets[:, :18])
    for i, f in enumerate(FIELDS):
        target = targets[..., i]
        keep = target != PAD
        if f != "family":
            keep &= target != IGNORE
        expected = F.cross_entropy(logits[f][keep], target[keep])
        torch.testing.assert_close(losses[f], expected, equal_nan=True)
        # words at Pad targets neither enter the loss nor (causally) the kept logits
        torch.testing.assert_close(truncated[f], losses[f], atol=1e-6, rtol=0, equal_nan=True)


def test_a_field_without_targets_gives_nan_and_is_skipped():
    model = tiny_model()
    words = random_words(model, 2, 10)
    targets = random_words(model, 2, 10, seed=3).clamp(min=2)
    targets[..., FIELDS.index("rest")] = IGNORE
    with torch.no_grad():
        _, losses = model(words, targets)
    assert torch.isnan(losses["rest"])
    others = [v for f, v in losses.items() if f != "rest"]
    assert all(torch.isfinite(v) for v in others)
    torch.testing.assert_close(total_loss(losses), torch.stack(others).mean())


# ---------------------------------------------------------------- config


def test_model_config_json_round_trip(tmp_path):
    cfg = tiny_config(n_layers=3)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path / "model.json")
    assert ModelConfig.load(tmp_path / "model.json") == cfg
    assert json.loads(cfg.to_json())["embed_widths"]["pitch"] == 8


@pytest.mark.parametrize("changes,message", [
    (dict(d_model=30), "multiple of n_heads"),
    (dict(n_heads=0), "multiple of n_heads"),
    (dict(n_layers=0), "n_layers"),
    (dict(max_relative_distance=0), "max_relative_distance"),
    (dict(dropout=1.0), "dropout"),
    (dict(embed_widths={"pitch": 8}), "embed_widths must name"),
    (dict(vocab_sizes={**CPTokenizer().vocab_sizes, "pitch": 2}), "vocab sizes must be >= 3"),
])
def test_model_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_model_config_rejects_missing_field_and_unknown_key():
    sizes = {f: n for f, n in CPTokenizer().vocab_sizes.items() if f != "rest"}
    with pytest.raises(ValueError, match="vocab_sizes must name"):
        ModelConfig(vocab_sizes=sizes)
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**tiny_config().to_dict(), "n_layer": 2})


# ---------------------------------------------------------------- checkpoints


@pytest.fixture
def exported(tmp_path):
    model = tiny_model(seed=4)
    save_checkpoint(model, CPTokenizer(), tmp_path / "step7", step=7)
    return model, tmp_path / "step7"


def test_export_then_load_gives_identical_logits(exported):
    model, stem = exported
    assert sorted(p.name for p in stem.parent.iterdir()) == ["step7.json", "step7.safetensors"]
    words = random_words(model, 2, 12)
    with torch.no_grad():
        want = model(words)
        for name in (stem, stem.with_suffix(".safetensors"), str(stem.with_suffix(".json"))):
            loaded, tokenizer = load_checkpoint(name, device="cpu")
            assert not loaded.training and tokenizer.config == TokenizerConfig()
            got = loaded(words)
            for f in FIELDS:
                assert torch.equal(got[f], want[f])
    assert json.loads(stem.with_suffix(".json").read_text())["step"] == 7


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint .*nothing"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="shipped checkpoints"):
        load_checkpoint(999)


def test_weights_without_json_are_refused(exported):
    _, stem = exported
    stem.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="step7.json"):
        load_checkpoint(stem)


def test_other_tokenizer_config_is_refused(exported):
    _, stem = exported
    with pytest.raises(CheckpointError, match="different tokenizer"):
        load_checkpoint(stem, device="cpu", tokenizer_config=TokenizerConfig(n_velocity=32))
    load_checkpoint(stem, device="cpu", tokenizer_config=TokenizerConfig())


def edit_json(stem, change) -> None:
    path = stem.with_suffix(".json")
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


def test_weights_of_another_shape_are_refused(exported):
    _, stem = exported
    edit_json(stem, lambda info: info["model"].update(d_ff=128))
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_checkpoint(stem, device="cpu")


def test_vocab_that_disagrees_with_tokenizer_is_refused(exported):
    _, stem = exported
    edit_json(stem, lambda info: info["tokenizer"].update(n_velocity=32))
    with pytest.raises(CheckpointError, match="vocabulary sizes"):
        load_checkpoint(stem, device="cpu")


def test_malformed_checkpoint_json_is_refused(exported):
    _, stem = exported
    edit_json(stem, lambda info: info.pop("model"))
    with pytest.raises(CheckpointError, match="not a cwcompose checkpoint"):
        load_checkpoint(stem, device="cpu")
    stem.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a cwcompose checkpoint"):
        load_checkpoint(stem, device="cpu")
