import re

from xorsparse.cli import main


def test_demo_default_settings(tmp_path, capsys):
    """The main job end to end on the bundled MiniLM, with its machine-readable last line."""
    code = main(["demo", "--out", str(tmp_path / "minilm.xsp")])
    captured = capsys.readouterr()
    assert "Loading weights" not in captured.err and "%|" not in captured.err  # no progress bars in the table
    out = captured.out.strip().splitlines()
    assert code == 0
    m = re.fullmatch(r"demo: lossless=(\w+) max_abs_diff=(\S+) total_bits_per_weight=([\d.]+) "
                     r"resident_fraction=([\d.]+)", out[-1])
    assert m, out[-1]
    assert m.group(1) == "yes" and float(m.group(2)) == 0
    assert float(m.group(3)) <= 0.78
    assert float(m.group(4)) < 0.15
