"""One snapshot, in place: reposition is exact at α = 0 and α = 1."""

import torch

from sfpo_rllib.slow_fast import ParameterSnapshot


def test_reposition_interpolates_in_place():
    p = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    snap = ParameterSnapshot()
    snap.take(p)
    storage = [x.data_ptr() for x in p]
    p[0] += torch.tensor([10.0, -10.0])
    p[1] += 4.0
    assert abs(snap.distance(p) - (200 + 16) ** 0.5) < 1e-9
    snap.reposition(p, 0.25)
    torch.testing.assert_close(p[0], torch.tensor([3.5, -0.5]))
    torch.testing.assert_close(p[1], torch.tensor([[4.0]]))
    assert [x.data_ptr() for x in p] == storage


def test_alpha_one_and_zero_are_bit_exact():
    torch.manual_seed(0)
    theta0 = [torch.randn(1000)]
    thetak = [theta0[0] + torch.randn(1000) * 1e-3]
    snap = ParameterSnapshot()
    snap.take(theta0)
    p = [thetak[0].clone()]
    snap.reposition(p, 1.0)
    assert torch.equal(p[0], thetak[0])
    snap.reposition(p, 0.0)
    assert torch.equal(p[0], theta0[0])


def test_snapshot_buffers_are_reused():
    p = [torch.zeros(3)]
    snap = ParameterSnapshot()
    snap.take(p)
    first = snap._theta0[0].data_ptr()
    p[0] += 1
    snap.take(p)
    assert snap._theta0[0].data_ptr() == first and torch.equal(snap._theta0[0], torch.ones(3))
