"""Helpers of bench/termination.py that need no kernel: running the ss
commands a few at a time, the doc section a namespace-only run writes."""

from __future__ import annotations

import pytest

from bench import termination as bt


@pytest.mark.parametrize("procs", [1, 2, 5])
def test_run_ss_counts_lines_at_any_parallelism(procs):
    cmds = [["printf", "a\\nb\\n"], ["echo", "c"], ["true"], ["printf", "d\\n"]]
    assert bt.run_ss(cmds, procs) == 4


def test_run_ss_failure_names_the_command():
    with pytest.raises(RuntimeError, match="false failed"):
        bt.run_ss([["sleep", "0.2"], ["false"], ["echo", "x"]], 2)


def test_doc_section_per_layout():
    full = bt.parse_args([])
    assert bt.doc_section(full, -262144)[0] == bt.BEGIN
    only_ns = bt.parse_args(["--sizes", "", "--child-ehash", "4096"])
    begin, end, title = bt.doc_section(only_ns, 4096)
    assert begin == "<!-- termination-netns-own:begin -->" and end == "<!-- termination-netns-own:end -->"
    assert "hash per namespace" in title
    assert bt.doc_section(only_ns, -262144)[0] == "<!-- termination-netns-shared:begin -->"
    assert only_ns.argv == "--sizes '' --child-ehash 4096"
