"""The report says only what its own tables show (finding: it named node0 "the straggler the
others wait for" while its table had node0 waiting 1.59 s per rank and node1 0.086 s)."""

from __future__ import annotations

from magpie_trace.report import write_report
from magpie_trace.rundir import RunDir
from tests.run.report_statements import check_statements, sections

# The tour's table: node0's ranks wait for node1's, and node0 holds more last arrivals only
# because its intra-node collectives count too.
NODES_CSV = """node,ranks,collectives,comm_time_per_rank_us,wait_time_per_rank_us,median_wait_us,times_last_to_arrive
node0,8,4000,2100000.0,1590000.0,350.0,2900
node1,8,4000,640000.0,86000.0,12.0,1100
"""


def run_with_nodes_table(tmp_path, text: str) -> RunDir:
    run_dir = RunDir(tmp_path / "run")
    run_dir.merged.mkdir(parents=True)
    (run_dir.merged / "nodes.csv").write_text(text)
    write_report(run_dir)
    return run_dir


def test_the_node_the_others_wait_for_is_the_one_its_table_shows(tmp_path):
    run_dir = run_with_nodes_table(tmp_path, NODES_CSV)
    check_statements(run_dir)
    text = sections(run_dir.report_md.read_text())["Cross-node collectives"]
    assert "the others wait for node1." in text
    assert "node0 waits the most in collectives (1590000 µs per rank)" in text


def test_equal_waits_name_no_node(tmp_path):
    same = NODES_CSV.replace("86000.0", "1590000.0")
    run_dir = run_with_nodes_table(tmp_path, same)
    check_statements(run_dir)
    assert "none holds them up" in run_dir.report_md.read_text()
