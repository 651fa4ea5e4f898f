"""Book-Keeping clipping (tasks.dp_clipping), the trainer's DP-SGD step, against Opacus' ghost clipping."""

from __future__ import annotations

import copy

import pytest
import torch
from test_training import TOWERS, _examples, _tower_model

from tasks.training import TrainConfig, empty_batch_step, make_private_trainer


def _batch(n: int = 8) -> tuple[object, list[torch.Tensor]]:
    examples = _examples(n)
    return examples, [torch.stack(t) for t in zip(*(examples[i] for i in range(n)), strict=True)]


def _update(model: torch.nn.Module, clipping: str, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    examples, batch = _batch()
    module, optimizer, criterion, _, _ = make_private_trainer(model, examples, config, clipping=clipping)
    optimizer.zero_grad()
    criterion(module(*batch[:3]), batch[3]).backward()
    norms = module.per_sample_gradient_norms.detach().clone()
    assert optimizer.pre_step()  # clip (done by the loss), noise, scale: the update Adam receives
    return norms, torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize(("item_tower", "user_tower", "user_features"), TOWERS)
def test_the_clipped_and_noised_update_equals_opacus_ghost_clipping(
    item_tower: str, user_tower: str, user_features: bool
) -> None:
    """Same parameters, same batch, the same noise (a seeded generator, tests only): the update of the
    trainer's one-pass clipping equals Opacus' two-pass ghost clipping within 1e-5."""
    model = _tower_model(item_tower, user_tower, user_features)
    config = TrainConfig(max_grad_norm=0.05, noise_multiplier=0.7, batch_size=8, noise_seed=11)
    ghost_norms, ghost = _update(copy.deepcopy(model), "ghost", config)
    norms, mine = _update(model, "book_keeping", config)
    torch.testing.assert_close(norms, ghost_norms, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mine, ghost, rtol=0, atol=1e-5)
    # the noise is there: without it the update differs
    _, clean = _update(copy.deepcopy(model), "ghost", TrainConfig(max_grad_norm=0.05, noise_multiplier=0.0))
    assert float((mine - clean).abs().max()) > 1e-3


def test_the_noise_std_is_the_configured_multiplier_times_the_clip_and_the_accountant_records_it() -> None:
    """The multiplier the ledger calibrated (TrainConfig.noise_multiplier, set by run_training from the
    charge's mechanism) is the one the noise is drawn with and the one the accountant composes."""
    examples, _ = _batch()
    model = _tower_model("text", "attention", False)
    config = TrainConfig(max_grad_norm=0.5, noise_multiplier=3.0, batch_size=4)
    _, optimizer, _, _, engine = make_private_trainer(model, examples, config)
    assert not hasattr(optimizer, "_adjusted_noise_multiplier")  # no side door that lowers the noise
    draws = []
    for _ in range(20):
        optimizer.zero_grad()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # a zero clipped sum: what comes out is the noise alone
        assert optimizer.pre_step()
        draws.append(
            torch.cat([p.grad.flatten() for p in model.parameters()]) * optimizer.expected_batch_size
        )
    noise = torch.cat(draws)
    assert optimizer.expected_batch_size == 4
    assert abs(float(noise.std()) / (config.noise_multiplier * config.max_grad_norm) - 1) < 0.02
    assert engine.accountant.history == [(3.0, 0.5, 20)]


def test_a_layer_without_a_one_pass_formula_is_refused() -> None:
    from tasks.dp_clipping import BookKeepingModule

    with pytest.raises(ValueError, match="LayerNorm"):
        BookKeepingModule(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3)))


def test_an_empty_poisson_sample_at_the_first_step_is_a_noise_only_step() -> None:
    """Opacus' optimizer needs a gradient per parameter; before the first backward there is none."""
    examples, _ = _batch()
    model = _tower_model("text", "attention", False)
    config = TrainConfig(max_grad_norm=0.5, noise_multiplier=1.0, batch_size=4)
    _, optimizer, _, _, engine = make_private_trainer(model, examples, config)
    before = [p.detach().clone() for p in model.parameters()]
    empty_batch_step(model, optimizer)
    assert engine.accountant.history == [(1.0, 0.5, 1)]
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_a_layer_run_on_rows_shared_by_all_users_is_refused() -> None:
    """A trainable layer applied once to a table every user reads (leading dimension 1, not the batch)
    has rows that belong to no user: it is refused in one line before any gradient is set (before this
    check the norms broadcast over it and the step failed later in an opaque matmul shape error). A shared
    table whose leading dimension happens to equal the batch cannot be told apart by shape: the model keeps
    the batch-first rule (one row block per user), as Opacus' ghost clipping also assumes."""
    from tasks.dp_clipping import BookKeepingModule

    class SharedTable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(1, 5, 3), requires_grad=False)
            self.items = torch.nn.Linear(3, 3)

        def forward(self, users: torch.Tensor) -> torch.Tensor:
            return (users.unsqueeze(1) * self.items(self.table)).sum(dim=(1, 2))  # [B]

    module = BookKeepingModule(SharedTable())
    module.train()
    loss = module(torch.randn(4, 3)).square()
    with pytest.raises(RuntimeError, match="cannot be attributed to users"):
        module.clipped_backward(loss, max_grad_norm=1.0)
