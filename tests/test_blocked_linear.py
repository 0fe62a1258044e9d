"""blocked_linear.BlockedLinear: the product of nn.Linear without bias, whatever the threads and row counts, and the
same parameter and state dict; product_into: the same product into a buffer, or added to it, by a kernel chosen once."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import blocked_linear
from blocked_linear import MAX_BLOCKED_ROWS, BlockedLinear, product_into


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("out_features", [64, 61, 96])
def test_blocked_product_equals_f_linear(threads, out_features):
    """Few rows (blocked, or not when out_features is prime) and more rows (F.linear) give F.linear's product."""
    layer = BlockedLinear(48, out_features)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in [(48,), (1, 48), (1, 1, 48), (3, 5, 48), (MAX_BLOCKED_ROWS, 48), (MAX_BLOCKED_ROWS + 1, 48),
                      (2, 20, 48)]:
            x = torch.randn(shape)
            got = layer(x)
            assert got.shape == (*shape[:-1], out_features)
            torch.testing.assert_close(got, F.linear(x, layer.weight), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_gradients_equal_f_linear():
    layer = BlockedLinear(32, 24)
    x = torch.randn(2, 3, 32, requires_grad=True)
    layer(x).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    weight_ref = layer.weight.detach().clone().requires_grad_()
    F.linear(x_ref, weight_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, weight_ref.grad, rtol=1e-5, atol=1e-5)


def test_is_an_nn_linear_with_its_state_dict():
    layer = BlockedLinear(8, 4)
    assert isinstance(layer, nn.Linear) and layer.bias is None
    assert list(layer.state_dict()) == ["weight"] and layer.weight.shape == (4, 8)
    plain = nn.Linear(8, 4, bias=False)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(3, 8)
    torch.testing.assert_close(plain(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["blocked", "F.linear"])
@pytest.mark.parametrize("rows", [1, 3])
def test_product_into_sets_or_adds_to_its_buffer(monkeypatch, kernel, rows):
    """The bound call writes x·Wᵀ into y, or adds it there, for whatever x holds at the time of the call."""
    monkeypatch.setattr(blocked_linear, "fastest_kernel", lambda *shape: kernel)
    cut = []  # the weights cut into blocks, which only the blocked kernel does
    monkeypatch.setattr(blocked_linear, "blocks", lambda w, blocks=blocked_linear.blocks: cut.append(w) or blocks(w))
    weight, x, y = torch.randn(64, 48), torch.empty(rows, 48), torch.empty(rows, 64)
    into, add_into = product_into(weight, x, y), product_into(weight, x, y, accumulate=True)
    assert len(cut) == (2 if kernel == "blocked" else 0)
    for _ in range(2):  # the buffers refilled in place, as a decoding loop does
        x.normal_()
        into()
        torch.testing.assert_close(y, F.linear(x, weight), rtol=1e-5, atol=1e-5)
        before = y.clone()
        add_into()
        torch.testing.assert_close(y, before + F.linear(x, weight), rtol=1e-5, atol=1e-5)
