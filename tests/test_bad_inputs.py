"""Every bad input of tools/bad_inputs.py (at least every row of ../shared/reference/bad-inputs.md)
exits non-zero with its expected message, without a traceback, before Ray, creating or changing no
file; and docs/bad_inputs.md, the table written from the same runs, is in sync with the cases.

All cases run in one `python -m tools.bad_inputs` process (torch imported once); its JSON results
are what the tests read."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from tools.bad_inputs import CASES, can_mount, table

RUN = [c for c in CASES if not c.pending]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_inputs") / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bad_inputs", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", RUN, ids=[c.id for c in RUN])
def test_bad_input_is_refused_clearly(results, case):
    if case.needs == "mount" and not can_mount():  # the one reason tools.bad_inputs leaves a case out
        pytest.skip(f"{case.id}: needs `unshare -m`, not allowed here")
    assert case.id in results, f"{case.id}: no result from tools.bad_inputs (ran: {sorted(results)})"
    r = results[case.id]
    expect = case.expect.replace("{w}", r["w"])
    assert r["rc"] != 0, r["output"][-2000:]
    assert expect in r["output"], r["output"][-2000:]
    assert "Traceback" not in r["output"] and "reached Ray" not in r["output"], r["output"][-3000:]
    assert r["changed"] == [], f"files created or changed: {r['changed']}"


def test_the_table_lists_every_case_with_its_message(results):
    doc = (ROOT / "docs" / "bad_inputs.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith("| group")]
    assert len(rows) == len(CASES)
    for case, row in zip(CASES, rows):
        assert row.startswith(f"| {case.group} | {case.input} |"), (case.id, row)
        if not case.pending and case.id in results:
            assert case.expect.replace("{w}", "$W").replace("|", "\\|") in row, (
                f"{case.id}: docs/bad_inputs.md is out of date; run `.venv/bin/python -m tools.bad_inputs "
                "--write-table docs/bad_inputs.md`"
            )
    # the writer and the file agree on everything but timings
    strip = lambda text: [r.rsplit(" | ", 2)[0].rsplit(" | ", 1)[0] for r in text.splitlines() if r.startswith("| ")]  # noqa: E731
    assert strip(table(results)) == strip(doc)
