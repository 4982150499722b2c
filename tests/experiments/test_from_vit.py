"""experiments/from_vit/run.py: the conversion experiment in its smallest form, and resuming."""

import csv


def test_from_vit_experiment_smallest_form_and_resume(tmp_path, capsys):
    from experiments.from_vit import run

    argv = [
        "--fractions",
        "0.1",
        "--seeds",
        "0",
        "--pretrain-steps",
        "3",
        "--steps",
        "2",
        "--embed-dim",
        "16",
        "--depth",
        "3",
        "--local-up-to-layer",
        "2",
        "--out",
        str(tmp_path / "fv"),
        "--cache",
        str(tmp_path / "tw"),
    ]
    run.main(argv)
    assert "ETA" in capsys.readouterr().out and "converted − DeiT" in (tmp_path / "fv" / "summary.md").read_text()
    with open(tmp_path / "fv" / "results.csv") as f:
        assert sorted(r["start"] for r in csv.DictReader(f)) == ["converted", "deit", "scratch"]
    assert (tmp_path / "fv" / "from_vit.png").is_file()
    run.main(argv + ["--resume"])
    assert "resuming: 1 of 1" in capsys.readouterr().out
