"""The probe check alone: top-1 agreement against the stored reference, the 99 % rule, the record and its lines."""
import torch
from torch import nn

from cnncompress.deploy import self_check
from cnncompress.storage.probe_section import Probes, quantize


class _Fixed(nn.Module):
    """Returns ``outputs[i]`` for the i-th call."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs, self.calls = outputs, 0

    def forward(self, x):
        self.calls += 1
        return self.outputs[self.calls - 1].unsqueeze(0)


def _probes(reference):
    codes, low, step = quantize(torch.rand(len(reference), 1, 4, 4))
    return Probes(codes, low, step, reference, "the form", "somewhere", [])


def test_agreement_is_top1_against_the_reference():
    reference = torch.eye(4)
    outputs = torch.eye(4)[[0, 1, 3, 3]] * 2
    agreeing, worst = self_check.run_probes(_Fixed(outputs), _probes(reference))
    assert agreeing == 3 and worst == 2.0


def test_99_percent_or_the_exact_form_with_one_line(capsys):
    reference = torch.eye(10)[torch.arange(100) % 10]
    one_off = reference.clone()
    one_off[0] = torch.eye(10)[1]
    used = self_check.check(_Fixed(one_off), _probes(reference), lambda: nn.Identity(), "int8")
    assert not isinstance(used, nn.Identity) and used.metadata["probe_check"]["agreement"] == 99.0
    assert capsys.readouterr().err == ""
    two_off = one_off.clone()
    two_off[1] = torch.eye(10)[0]
    exact = nn.Identity()
    used = self_check.check(_Fixed(two_off), _probes(reference), lambda: exact, "int8")
    record = self_check.record_of(used)
    assert used is exact and not record["passed"] and record["agreement"] == 98.0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "98/100 probe images" in err[0] and "98 % < 99 %" in err[0]
    assert self_check.describe(record).startswith("probe check: int8 on pytorch: only 98/100")


def test_a_deployed_form_that_is_the_exact_one_is_kept_and_said_so(capsys):
    reference = torch.eye(3)
    wrong = _Fixed(torch.eye(3)[[1, 2, 0]])
    used = self_check.check(wrong, _probes(reference), None, "fixed-point")
    assert used is wrong and "it is the exact form, there is no other" in capsys.readouterr().err


def test_describe_says_nothing_without_a_check():
    assert self_check.describe(None) is None and self_check.record_of(nn.Linear(1, 1)) is None
