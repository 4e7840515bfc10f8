"""What every entry point shares: the XLA flags it adds before TensorFlow starts."""

import os

import pytest

from stages.lib import cli


@pytest.mark.parametrize(
    "before, after",
    [
        (None, cli.XLA_CPU_FLAGS),
        ("--xla_dump_to=/tmp/x", "--xla_dump_to=/tmp/x " + cli.XLA_CPU_FLAGS),
        ("--xla_cpu_prefer_vector_width=256", "--xla_cpu_prefer_vector_width=256"),  # the user's choice wins
    ],
)
def test_configure_xla_adds_our_flags_once(monkeypatch, before, after):
    if before is None:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    else:
        monkeypatch.setenv("XLA_FLAGS", before)
    cli.configure_xla()
    cli.configure_xla()
    assert os.environ["XLA_FLAGS"] == after
