"""The hub's command line applies the same text rule as the HTTP API, before any command runs
(Hardening, build 2: "CLI input to the hub")."""

from __future__ import annotations

import uuid

import pytest

from ops import cli

NOT_TEXT = ["ref\udcff",  # bytes that are not UTF-8 arrive as lone surrogates (surrogateescape)
            "ref\x1b[31m",  # a terminal escape
            "a\ud800b"]


def _commands_record_into(ran: list, monkeypatch) -> None:
    """Every command replaced by one that only records its --reference."""
    real = cli.build_parser

    def build():
        parser = real()
        parse = parser.parse_args

        def parse_args(argv):
            args = parse(argv)
            args.func = lambda a: ran.append(a.reference) or 0
            return args

        parser.parse_args = parse_args
        return parser

    monkeypatch.setattr(cli, "build_parser", build)


@pytest.mark.parametrize("value", NOT_TEXT)
def test_an_argument_that_is_not_text_is_refused_before_the_command_runs(value, monkeypatch, capsys) -> None:
    ran: list = []
    _commands_record_into(ran, monkeypatch)
    assert cli.main(["admin", "resolve-refund", str(uuid.uuid4()), "pi_123", "--reference", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error [invalid_text]: reference must be text")
    assert ran == []


def test_text_arguments_reach_the_command(monkeypatch) -> None:
    ran: list = []
    _commands_record_into(ran, monkeypatch)
    text = "paid by bank transfer, ref 42 ✓"
    assert cli.main(["admin", "resolve-refund", str(uuid.uuid4()), "pi_123", "--reference", text]) == 0
    assert ran == [text]
