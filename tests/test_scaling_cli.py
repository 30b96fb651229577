"""`clipscale fit` and `clipscale fit-nd`: output contract and error messages."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from clipscale.scaling.cli import register
from tests.test_scaling_mlflow import make_ladder_store


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="clipscale")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def power_csv(tmp_path):
    rng = np.random.default_rng(0)
    c = np.geomspace(1e15, 1e19, 8)
    err = 0.9 * (c / 1e15) ** -0.15 * np.exp(rng.normal(0, 0.01, len(c)))
    path = tmp_path / "runs.csv"
    pd.DataFrame({"rung": [f"r{i}" for i in range(8)], "compute": c, "err": err}).to_csv(path, index=False)
    return path


def test_fit_json_is_one_object_with_the_contract(power_csv, capsys):
    code, out, _ = run(["fit", "--csv", str(power_csv), "--x", "compute", "--y", "err", "--json",
                        "--bootstrap", "200", "--holdout", "2", "--seed", "3"], capsys)
    assert code == 0
    d = json.loads(out)  # exactly one JSON document, nothing else on stdout
    assert d["form"] == "power" and d["n_points"] == 8
    assert d["b"] == pytest.approx(0.15, abs=0.01)
    assert d["a"] * 1e15 ** -d["b"] == pytest.approx(0.9, rel=0.05)
    assert d["r2"] > 0.99
    assert d["ci"]["a"][0] < d["a"] < d["ci"]["a"][1]
    assert d["ci"]["b"][0] < d["b"] < d["ci"]["b"][1]
    pts = d["holdout"]["points"]
    assert [p["label"] for p in pts] == ["r6", "r7"]
    for p in pts:
        assert p["abs_error"] == pytest.approx(abs(p["predicted"] - p["actual"]))
        assert p["rel_error"] == pytest.approx(p["abs_error"] / p["actual"])
    # Same seed, same intervals.
    _, out2, _ = run(["fit", "--csv", str(power_csv), "--x", "compute", "--y", "err", "--json",
                      "--bootstrap", "200", "--seed", "3"], capsys)
    assert json.loads(out2)["ci"] == d["ci"]


def test_fit_saturating_and_frontier_forms(power_csv, capsys):
    code, out, _ = run(["fit", "--csv", str(power_csv), "--x", "compute", "--y", "err", "--json",
                        "--form", "saturating", "--bootstrap", "30"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["form"] == "saturating" and {"a", "b", "E_inf"} <= set(d["ci"])
    assert 0 <= d["E_inf"] <= 0.9
    code, out, _ = run(["fit", "--csv", str(power_csv), "--x", "compute", "--y", "err", "--json",
                        "--form", "frontier", "--bootstrap", "30"], capsys)
    assert code == 0 and json.loads(out)["form"] == "frontier"


def test_fit_readable_summary_and_plot(power_csv, tmp_path, capsys):
    prefix = tmp_path / "figs" / "fit"
    code, out, _ = run(["fit", "--csv", str(power_csv), "--x", "compute", "--y", "err", "--bootstrap", "50",
                        "--holdout", "1", "--plot", str(prefix)], capsys)
    assert code == 0
    assert "b      =" in out and "R^2" in out and "r7" in out
    for ext in (".png", ".svg"):
        assert (tmp_path / "figs" / f"fit{ext}").stat().st_size > 1000


def test_bad_column_lists_available_columns(power_csv, capsys):
    code, out, err = run(["fit", "--csv", str(power_csv), "--x", "flops", "--y", "err"], capsys)
    assert code == 2 and out == ""
    assert "flops" in err and "compute" in err and "rung" in err


def test_missing_csv_and_missing_axes(tmp_path, power_csv, capsys):
    code, _, err = run(["fit", "--csv", str(tmp_path / "nope.csv"), "--x", "a", "--y", "b"], capsys)
    assert code == 2 and "nope.csv" in err
    code, _, err = run(["fit", "--csv", str(power_csv)], capsys)
    assert code == 2 and "--x" in err


def test_fit_nd_prints_parameters_and_exponents(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 60))
    d = np.exp(rng.uniform(np.log(1e9), np.log(1e12), 60))
    loss = (1.7 + 400 / n**0.34 + 1500 / d**0.30) * np.exp(rng.normal(0, 0.005, 60))
    path = tmp_path / "nd.csv"
    pd.DataFrame({"N": n, "D": d, "L": loss}).to_csv(path, index=False)
    code, out, _ = run(["fit-nd", "--csv", str(path), "--n", "N", "--d", "D", "--y", "L", "--json"], capsys)
    assert code == 0
    r = json.loads(out)
    for k in ("E", "A", "B", "alpha", "beta", "a_exp", "b_exp"):
        assert np.isfinite(r[k])
    assert r["a_exp"] == pytest.approx(r["beta"] / (r["alpha"] + r["beta"]))
    assert r["b_exp"] == pytest.approx(r["alpha"] / (r["alpha"] + r["beta"]))
    assert r["E"] == pytest.approx(1.7, rel=0.03)
    code, out, _ = run(["fit-nd", "--csv", str(path), "--n", "N", "--d", "D", "--y", "L"], capsys)
    assert code == 0 and "a_exp" in out and "alpha" in out
    code, _, err = run(["fit-nd", "--csv", str(path), "--n", "params", "--d", "D", "--y", "L"], capsys)
    assert code == 2 and "params" in err and "'N'" in err


def test_fit_from_experiment(tmp_path, capsys):
    uri, truth, _ = make_ladder_store(tmp_path, experiment="cli-ladder", resumed=False)
    code, out, err = run(["fit", "--experiment", "cli-ladder", "--tracking-uri", uri, "--json", "--bootstrap", "50"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["y"] == "zeroshot/shape_color/error" and d["x"] == "flops"
    assert d["n_points"] == 5
    assert [e["rung"] for e in d["excluded"]] == ["r5"]
    assert "r5" in err  # the warning about the FAILED rung reaches the user
    code, out, _ = run(["fit", "--experiment", "cli-ladder", "--tracking-uri", uri, "--x", "device_days",
                        "--task", "shape_color-shift", "--json", "--bootstrap", "0"], capsys)
    assert code == 0 and json.loads(out)["y"] == "zeroshot/shape_color-shift/error"
    code, _, err = run(["fit", "--experiment", "cli-ladder", "--tracking-uri", uri, "--task", "imagenet"], capsys)
    assert code == 2 and "imagenet" in err and "shape_color" in err
    code, _, err = run(["fit", "--experiment", "other", "--tracking-uri", uri], capsys)
    assert code == 2 and "other" in err and "cli-ladder" in err


def test_console_script_dispatches_to_fit(power_csv):
    """Through the real `clipscale` entry point, as scripts call it."""
    proc = subprocess.run(
        [sys.executable, "-m", "clipscale.cli", "fit", "--csv", str(power_csv), "--x", "compute", "--y", "err",
         "--json", "--bootstrap", "20"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["form"] == "power"
