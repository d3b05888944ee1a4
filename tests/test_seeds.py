"""The one seed grammar (diffusion_core.seeds), as the CLI's commands and the app read it."""

import re

import pytest

from diffusion_core.cli import main
from diffusion_core.seeds import MAX_SEEDS, SEED_LIMIT, parse_seeds, seed_range
from explorer_ui import plans
from tests.helpers import make_tiny_checkpoint


@pytest.mark.parametrize("text, seeds", [
    ("3", [3]),
    ("3,5,9", [3, 5, 9]),
    ("3 5, 9", [3, 5, 9]),
    ("0-7", list(range(8))),
    ("0:100", list(range(100))),
    ("0-3, 10 12:14", [0, 1, 2, 3, 10, 12, 13]),
    ("  7,7 ", [7, 7]),  # order and repeats are kept: seed i is image i
    ("9223372036854775807", [2**63 - 1]),
    ("9223372036854775806-9223372036854775807", [2**63 - 2, 2**63 - 1]),
])
def test_grammar(text, seeds):
    assert parse_seeds(text) == seeds


def test_argv_tokens_read_as_one_text():
    assert parse_seeds(["0-1", "5,6", "9:11"]) == [0, 1, 5, 6, 9, 10]


@pytest.mark.parametrize("text, message", [
    ("", "type some seeds"),
    (" , ", "type some seeds"),
    ("x", "'x' is not a seed"),
    ("-3", "'-3' is not a seed"),
    ("3.5", "'3.5' is not a seed"),
    ("1-2-3", "'1-2-3' is not a seed"),
    ("5-2", "seed range '5-2' runs backwards"),
    ("5:2", "seed range '5:2' runs backwards"),
    ("5:5", "seed range '5:5' is empty"),
    ("9223372036854775808", "seeds must be from 0 to 2**63 - 1 (9223372036854775807)"),
    ("9223372036854775800:9223372036854775809", "seeds must be from 0 to 2**63 - 1"),
])
def test_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        parse_seeds(text)


def test_count_cap_is_named_and_checked_before_any_seed_is_made():
    assert len(parse_seeds("0:16", max_count=16)) == 16
    with pytest.raises(ValueError, match="17 seeds asked for; at most 16 seeds per request"):
        parse_seeds("0-15 99", max_count=16)
    with pytest.raises(ValueError, match=f"at most {MAX_SEEDS} seeds"):
        parse_seeds(f"0:{SEED_LIMIT}")  # 2**63 seeds: refused at once, not enumerated


def test_seed_range_same_bound_and_cap():
    assert seed_range(5, 3) == [5, 6, 7]
    assert seed_range(SEED_LIMIT - 2, 2) == [SEED_LIMIT - 2, SEED_LIMIT - 1]
    for start, count, message in [(0, 0, "at least one seed"), (-1, 2, "seeds must be from 0"),
                                  (SEED_LIMIT - 2, 3, "seeds must be from 0"),
                                  (0, MAX_SEEDS + 1, f"at most {MAX_SEEDS} seeds")]:
        with pytest.raises(ValueError, match=message):
            seed_range(start, count)


def test_the_app_reads_seeds_with_the_same_grammar():
    assert plans.parse_seeds("0:3, 7") == [0, 1, 2, 7]
    with pytest.raises(ValueError, match=f"at most {plans.MAX_SEEDS} seeds per request"):
        plans.parse_seeds(f"0-{plans.MAX_SEEDS}")
    with pytest.raises(ValueError, match="'-1' is not a seed"):
        plans.parse_seeds("-1, 3")
    assert plans.seed_range(plans.MAX_SEED, 2) == [plans.MAX_SEED, plans.MAX_SEED + 1]
    with pytest.raises(ValueError, match=f"at most {plans.MAX_IMAGES} seeds"):
        plans.seed_range(0, plans.MAX_IMAGES + 1)


@pytest.mark.parametrize("command, extra", [("sample", []), ("interpolate", ["--frames", "3"])])
@pytest.mark.parametrize("seeds, message", [(["-1", "2"], "'-1' is not a seed"),
                                            (["3", "9223372036854775808"], "seeds must be from 0 to 2**63 - 1"),
                                            (["0:10001"], "at most 10000 seeds")])
def test_every_command_refuses_the_same_seeds(tmp_path, capsys, command, extra, seeds, message):
    ck = make_tiny_checkpoint(tmp_path)
    assert main([command, str(ck), "--seeds", *seeds, *extra, "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "o.png")]) == 2
    assert message in capsys.readouterr().err


def test_interpolate_takes_seed_ranges(tmp_path, capsys):
    ck = make_tiny_checkpoint(tmp_path)
    assert main(["interpolate", str(ck), "--seeds", "0:3", "--frames", "4", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "i.png")]) == 0
    assert "4 frames" in capsys.readouterr().out
