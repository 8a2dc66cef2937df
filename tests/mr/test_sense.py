import torch

from mrprior.mr.linop import power_iteration
from mrprior.mr.sense import sense_operator
from tests.operator_checks import check_operator


def _csm(c=4, n=(24, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn((c, *n), dtype=torch.complex64, generator=g)
    return s / torch.sqrt((s.abs() ** 2).sum(0, keepdim=True))


def test_sense_operator_checks_full_and_masked():
    csm = _csm()
    mask = torch.rand(csm.shape[1:], generator=torch.Generator().manual_seed(1)) > 0.5
    for m in (None, mask):
        check_operator(sense_operator(csm, m))


def test_sense_batched_matches_single():
    csm = _csm()
    op = sense_operator(csm)
    x = torch.randn((3, *op.ishape), dtype=torch.complex64)
    yb = op.forward(x)
    assert yb.shape == (3, *op.oshape)
    torch.testing.assert_close(yb[1], op.forward(x[1]))


def test_fully_sampled_normalized_maps_have_unit_norm():
    op = sense_operator(_csm())
    assert abs(power_iteration(op.gram, iterations=20) - 1.0) < 1e-3


def test_shape_error_names_shapes():
    op = sense_operator(_csm())
    try:
        op.forward(torch.zeros((5, 5), dtype=torch.complex64))
    except ValueError as e:
        assert "(24, 20)" in str(e)
    else:
        raise AssertionError("no error")
