"""study_regimes.py: success against demos across study folders, read from their results.json (no runs)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_study(folder, data, train_args, rates, seeds=2, n=10):
    """A study.py results.json: variant -> per-seed successes out of n; references with reference=True."""
    runs = []
    for v, ks in rates.items():
        ref = v in ("expert", "blind")
        for s, k in enumerate(ks[:1] if ref else ks[:seeds]):
            runs.append(dict(variant=v, seed=s, success={"lift-seen": [k, n], "lift-unseen": [k // 2, n]},
                             outcomes={"lift-seen": "1" * k + "0" * (n - k)},   # episode i: the same seed in every run
                             cknna={} if ref else {"h": 0.5 + 0.01 * k}, **(dict(reference=True) if ref else {})))
    claims = [dict(claim="RS-CL raises success", better="rscl", worse="baseline", metric="seen", difference=0.1,
                   low=-0.1, high=0.3, interval="paired, 20 episodes", verdict="inconclusive")]
    os.makedirs(folder)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(dict(config=dict(data=data, train_args=train_args, tasks=["lift"]), runs=runs, claims=claims), f)


def test_regimes_plot_success_against_training_demos(synthetic, tmp_path):
    # the synthetic file: 6 demos of one task, 1 held out -> 5 training demos; --demos-per-task 2 -> 2
    fake_study(tmp_path / "low", synthetic, ["--demos-per-task", "2"],
               dict(baseline=[3, 4], rscl=[5, 6], expert=[10], blind=[6]))
    fake_study(tmp_path / "high", synthetic, [], dict(baseline=[8, 9], rscl=[9, 9], expert=[10], blind=[7]))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "study_regimes.py", str(tmp_path / "high"), str(tmp_path / "low"), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.load(open(out / "regimes.json"))
    assert [s["demos"] for s in got["studies"]] == [5, 2]
    assert got["curve"]["baseline"]["seen"] == [[2, 7, 20], [5, 17, 20]]   # pooled over seeds, in order of demos
    assert got["curve"]["rscl"]["unseen"] == [[2, 5, 20], [5, 8, 20]]
    assert got["curve"]["expert"]["seen"] == [[2, 10, 10], [5, 10, 10]]
    a = got["alignment_vs_success"]
    assert a["runs"] == 8 and a["spearman"] > 0.9   # CKNNA rises with success in the fake runs
    md = open(out / "regimes.md").read()
    assert "| baseline | 2 | 2 | 7/20 = 0.35" in md and "| 2 | RS-CL raises success (rscl vs baseline) | +0.100" in md
    # the plan's normal interval on the paired differences: low regime, 4 of 20 pairs differ by +1 -> 0.2 +- 1.96 * 0.4 /
    # sqrt(20); and the difference seed by seed
    assert "| +0.025 to +0.375 | +0.200, +0.200 |" in md, md
    assert (out / "success_vs_demos.png").stat().st_size > 1000


def test_regimes_bad_input_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "study_regimes.py", str(tmp_path / "nothing")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "run study.py with --out" in r.stderr, r.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{half")
    r = subprocess.run([sys.executable, "study_regimes.py", str(tmp_path / "bad")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--report-only" in r.stderr, r.stderr


def test_a_second_folder_of_a_regime_adds_its_variants(synthetic, tmp_path):
    """The privileged reference trained in a folder of its own joins its regime (same data, same demos): one more
    curve, no claim of its own, not in the Spearman; a variant given twice for one regime is refused."""
    fake_study(tmp_path / "low", synthetic, ["--demos-per-task", "2"], dict(baseline=[3, 4], rscl=[5, 6], expert=[10]))
    fake_study(tmp_path / "high", synthetic, [], dict(baseline=[8, 9], rscl=[9, 9], expert=[10]))
    fake_study(tmp_path / "low-priv", synthetic, ["--demos-per-task", "2"], dict(privileged=[9]), seeds=1)
    out = tmp_path / "out"
    run = lambda *f: subprocess.run([sys.executable, "study_regimes.py", *map(str, f), "--out", str(out)], cwd=ROOT,
                                    capture_output=True, text=True, timeout=120)
    r = run(tmp_path / "low", tmp_path / "low-priv", tmp_path / "high")
    assert r.returncode == 0, r.stderr
    got = json.load(open(out / "regimes.json"))
    assert [len(s["folders"]) for s in got["studies"]] == [2, 1]   # one regime from two folders
    assert got["curve"]["privileged"]["seen"] == [[2, 9, 10]]
    assert got["alignment_vs_success"]["runs"] == 8                # the 8 runs of baseline and RS-CL only
    assert "| privileged | 2 | 1 | 9/10 = 0.90" in open(out / "regimes.md").read()
    r = run(tmp_path / "low", tmp_path / "low")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "both hold baseline at 2 demos" in r.stderr, r.stderr
