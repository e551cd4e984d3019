"""The recipe table: each name maps to the real piece (lean layers, APOLLO family, AdamW) it plugs in."""
from __future__ import annotations

import pytest
import torch

from train_helpers import one_thread  # noqa: F401  (pytest fixture)
from leanformer import unpatch_
from leanformer.optim import APOLLO, APOLLOMini
from leanformer.train import recipes


def _tiny_llama(hidden: int = 64):
    from leanformer.models import build_model

    return build_model("llama-tiny", num_hidden_layers=1, hidden_size=hidden, intermediate_size=2 * hidden,
                       vocab_size=260, use_cache=False)


def test_optimizer_names_resolve_to_the_real_classes():
    assert recipes.resolve_optimizer("apollo-mini") == ("apollo-mini", APOLLOMini)
    assert recipes.resolve_optimizer("apollo") == ("apollo", APOLLO)
    assert recipes.resolve_optimizer("adamw") == ("adamw", torch.optim.AdamW)
    with pytest.raises(KeyError):
        recipes.resolve_optimizer("sgd")


def test_lean_recipe_patches_and_stock_leaves_the_model_alone():
    model = _tiny_llama()
    before = {n: type(m) for n, m in model.named_modules()}
    assert recipes.apply_recipe_(model, recipes.RECIPES["stock"]) == {"patched": False}
    assert {n: type(m) for n, m in model.named_modules()} == before
    info = recipes.apply_recipe_(model, recipes.RECIPES["lean"])
    assert info["patched"] and sum(info["report"].values()) > 0
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in info["report"].items())  # JSON-friendly
    assert {n: type(m) for n, m in model.named_modules()} != before
    unpatch_(model)
    assert {n: type(m) for n, m in model.named_modules()} == before


def test_apollo_mini_uses_the_lean_grouping_only_with_a_model():
    model = _tiny_llama()
    model.lm_head.weight.requires_grad_(False)  # frozen parameters never reach the optimizer
    opt, name, lr = recipes.build_optimizer("apollo-mini", model.parameters(), lr=None, model=model)
    assert isinstance(opt, APOLLOMini) and name == "apollo-mini" and lr == recipes.OPTIMIZERS["apollo-mini"].lr
    emb = [g for g in opt.param_groups if g.get("lowrank") is False]
    assert len(opt.param_groups) == 2 and len(emb) == 1
    assert [p is model.get_input_embeddings().weight for p in emb[0]["params"]] == [True]
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable
    plain, _, _ = recipes.build_optimizer("apollo-mini", model.parameters(), lr=1e-2)
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["lr"] == 1e-2


def test_apollo_rank_and_adamw_weight_decay_defaults():
    apollo, _, _ = recipes.build_optimizer("apollo", _tiny_llama(hidden=128).parameters(), lr=None)
    assert apollo.param_groups[0]["rank"] == 64  # the cap: every matrix side is >= 128
    model = _tiny_llama(hidden=48)
    apollo, _, _ = recipes.build_optimizer("apollo", model.parameters(), lr=None)
    assert apollo.param_groups[0]["rank"] == 48  # never above a matrix side
    adamw, _, lr = recipes.build_optimizer("adamw", model.parameters(), lr=None)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.0 and lr == 1e-3
    adamw, _, _ = recipes.build_optimizer("adamw", model.parameters(), lr=None, weight_decay=0.1)
    assert adamw.param_groups[0]["weight_decay"] == 0.1
