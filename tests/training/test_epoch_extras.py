"""Per-epoch extras that can be made cheaper: the EMA's evaluation every N epochs (--model-ema-eval-interval)."""

from conftest import TINY_MODEL, read_log

from convit.training.train import ema_evaluated, main


def test_ema_is_evaluated_every_interval_and_after_the_last_epoch():
    assert [ema_evaluated(e, 5, 1) for e in range(5)] == [True] * 5
    assert [ema_evaluated(e, 5, 2) for e in range(5)] == [False, True, False, True, True]
    assert [ema_evaluated(e, 3, 10) for e in range(3)] == [False, False, True]


def test_a_run_logs_the_ema_only_on_its_evaluated_epochs(folder, tmp_path):
    out = tmp_path / "run"
    args = ["--data-path", str(folder), *TINY_MODEL, "--epochs", "3", "--batch-size", "8", "--num-workers", "0"]
    args += ["--model-ema", "true", "--model-ema-eval-interval", "2", "--locality-images", "0", "--progress", "false"]
    main([str(a) for a in args + ["--output-dir", out]])
    rows = read_log(out)
    assert [("val_acc1_ema" in r, "val_acc1" in r) for r in rows] == [(False, True), (True, True), (True, True)]
    summary = (out / "summary.csv").read_text().splitlines()
    assert "val_acc1_ema" in summary[0] and len(summary) == 4
