"""LoRA adapters: they start as the identity update, merge into the same function, train alone."""

import dataclasses

import pytest
import torch

from jukebox_lite.algorithms.sampling import IncrementalDecoder
from jukebox_lite.core.config import LoRAConfig, PriorConfig, StylesConfig, TrainingConfig, VQVAEConfig
from jukebox_lite.core.errors import UserError
from jukebox_lite.models.prior import Prior
from jukebox_lite.nn.lora import LoRAConv1D, add_adapters, has_adapters, merge_adapters
from jukebox_lite.nn.transformer import Conv1D

CFG = PriorConfig(n_ctx=32, width=32, depth=2, blocks=4, heads=2, bins=16, n_genres=3, n_artists=4, t_bins=8,
                  sample_rate=16000, hop_length=8, min_duration=0.5, max_duration=5.0)


def labels(batch: int) -> torch.Tensor:
    return torch.tensor([[16000 * 2, 0, 16000, 1, 2]] * batch)


def randomised(prior: Prior) -> Prior:
    """Adapters with a non-zero update (B starts at zero: the update would be nothing)."""
    with torch.no_grad():
        for m in prior.modules():
            if isinstance(m, LoRAConv1D):
                m.lora_b.normal_(std=0.05)
    return prior


def test_an_adapter_starts_as_its_base_and_merges_into_the_same_function():
    torch.manual_seed(0)
    base = Conv1D(12, 20)
    with torch.no_grad():
        base.b.normal_()
    x = torch.randn(3, 5, 12)
    adapted = LoRAConv1D(base, rank=4, alpha=8.0)
    assert torch.equal(adapted(x), base(x))  # B = 0
    with torch.no_grad():
        adapted.lora_b.normal_()
    merged = adapted.merged()
    assert type(merged) is Conv1D and merged.b is base.b
    assert not torch.allclose(adapted(x), base(x), atol=1e-3)
    torch.testing.assert_close(merged(x), adapted(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.w, base.w + 2.0 * adapted.lora_a @ adapted.lora_b)  # alpha / rank = 2


def test_a_prior_with_adapters_trains_only_them_and_its_chosen_embeddings():
    torch.manual_seed(0)
    prior = Prior(CFG)
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    prior.add_adapters(LoRAConfig(rank=4, targets=["attn.c_attn", "mlp.c_proj"], train_embeddings=True))
    adapted = [name for name, m in prior.named_modules() if isinstance(m, LoRAConv1D)]
    assert len(adapted) == 2 * CFG.depth and all(n.endswith(("attn.c_attn", "mlp.c_proj")) for n in adapted)
    trainable = {name for name, p in prior.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert {n for n in trainable if "lora_" in n} == {f"{m}.lora_{ab}" for m in adapted for ab in "ab"}
    assert {n for n in trainable if "lora_" not in n} == {
        name for name, p in prior.named_parameters(remove_duplicate=False) if any(p is q for q in prior.embedding_parameters())
    }
    assert {"prior.x_emb.weight", "prior.x_out.weight"} <= trainable and not any(".ln_" in n or n.endswith((".w", ".b")) for n in trainable)

    codes = torch.randint(0, 16, (2, 32))
    _, metrics = prior(codes, labels=labels(2))
    metrics["loss"].backward()
    torch.optim.SGD([p for p in prior.parameters() if p.requires_grad], lr=0.1).step()
    after = prior.state_dict()
    for key, value in before.items():
        if key not in trainable:
            assert torch.equal(after[key], value), key  # frozen: not one bit moved


def test_merged_and_unmerged_priors_give_the_same_logits_and_only_merged_ones_sample():
    torch.manual_seed(1)
    prior = randomised(_adapted(Prior(CFG))).eval()
    codes = torch.randint(0, 16, (2, 32))
    with torch.no_grad():
        unmerged = prior.logits(codes, labels=labels(2))
        base_like = Prior(CFG).eval()
        base_like.load_state_dict({k: v for k, v in prior.state_dict().items() if "lora_" not in k})
        assert not torch.allclose(base_like.logits(codes, labels=labels(2)), unmerged, atol=1e-3)  # the adapters matter
        with pytest.raises(ValueError, match="merge"):
            IncrementalDecoder(prior, prior.conditioning(2, 32, labels=labels(2)))
        merge_adapters(prior)
        assert not has_adapters(prior)
        torch.testing.assert_close(prior.logits(codes, labels=labels(2)), unmerged, rtol=1e-4, atol=1e-4)
    assert set(prior.state_dict()) == set(Prior(CFG).state_dict())  # OpenAI's key layout again


def _adapted(prior: Prior) -> Prior:
    prior.add_adapters(LoRAConfig(rank=4))
    return prior


def test_adapters_go_only_where_asked():
    prior = Prior(CFG)
    assert add_adapters(prior, ["mlp.c_fc"], rank=2, alpha=2.0) == CFG.depth
    assert all(not p.requires_grad for n, p in prior.named_parameters() if "lora_" not in n)


def test_bad_adapter_settings_are_refused_in_one_sentence():
    narrow = dataclasses.replace(CFG, train=TrainingConfig(lora=LoRAConfig(rank=9)))  # attention width 0.25 · 32 = 8
    with pytest.raises(UserError, match=r"rank is 9, more than the narrowest adapted projection \(8"):
        narrow.validate("prior_level2")
    with pytest.raises(UserError, match="choose among"):
        TrainingConfig(lora=LoRAConfig(targets=["attn.q"])).validate("prior_level2.train", adapted=True)
    frozen_labels = dataclasses.replace(CFG, styles=StylesConfig(), train=TrainingConfig(lora=LoRAConfig(train_embeddings=False)))
    with pytest.raises(UserError, match="styles adds label rows, which must train and be saved"):
        frozen_labels.validate("prior_level2")
    with pytest.raises(UserError, match="priors' transformer only"):
        dataclasses.replace(VQVAEConfig(), train=TrainingConfig(lora=LoRAConfig())).validate()
