import dataclasses
from pathlib import Path

import pytest

from convit.training.config import Config, ConfigError, from_dict, load_yaml, parse_args, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = ["convit_tiny", "convit_tiny_plus", "convit_small", "convit_small_plus", "convit_base", "convit_base_plus"]


def test_digits_yaml_is_the_default():
    assert parse_args(["--config", str(CONFIGS / "digits.yaml")]) == parse_args([])
    assert parse_args([]).data == "digits"


def test_command_line_overrides_yaml():
    cfg = parse_args(
        [
            "--config",
            str(CONFIGS / "convit_small_in1k.yaml"),
            "--epochs",
            "1",
            "--lr",
            "1e-3",
            "--data-path",
            "/data/imagenet",
            "--scale",
            "0.5,1",
            "--clip-grad",
            "none",
            "--model-ema",
            "false",
            "--repeated-aug",
        ]
    )
    assert (cfg.epochs, cfg.lr, cfg.data_path, cfg.data) == (1, 1e-3, "/data/imagenet", "imagefolder")
    assert cfg.scale == (0.5, 1.0) and cfg.clip_grad is None
    assert cfg.model_ema is False and cfg.repeated_aug is True
    assert cfg.model == "convit_small" and cfg.weight_decay == 0.05  # untouched recipe values


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match="unknown config key 'lrr'; did you mean 'lr'"):
        parse_args(["--lrr", "3"])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nwarmup_epoch: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'warmup_epoch'"):
        load_yaml(path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "x"], "config key 'epochs'"),
        (["--data", "imagefolder"], "needs --data-path"),
        (["--sampling-ratio", "0"], "sampling_ratio"),
        (["--config", "no/such.yaml"], "not found"),
        (["--mixup", "0.8", "--batch-size", "3"], "even --batch-size"),
    ],
)
def test_bad_values_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


def test_dict_round_trip():
    cfg = parse_args(["--scale", "0.2,0.9", "--data-path", "/d"])
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_recipe_for_every_variant(variant):
    cfg = Config(**load_yaml(CONFIGS / f"{variant}_in1k.yaml"))
    assert cfg.model == variant and cfg.data == "imagefolder" and cfg.img_size == 224
    assert (cfg.opt, cfg.lr, cfg.lr_base_batch, cfg.weight_decay) == ("adamw", 5e-4, 512, 0.05)
    assert (cfg.sched, cfg.warmup_epochs, cfg.epochs) == ("cosine", 5, 300)
    assert cfg.aa == "rand-m9-mstd0.5-inc1"
    assert (cfg.mixup, cfg.cutmix, cfg.smoothing, cfg.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert cfg.repeated_aug and cfg.drop_path == 0.1 and cfg.sampling_ratio == 1.0


def test_ablation_and_data_efficiency_recipes():
    def load(name):
        return Config(**load_yaml(CONFIGS / f"{name}.yaml"))

    assert load("ablation_deit_small_in1k").local_up_to_layer == 0
    assert load("ablation_convit_small_in1k_no_local_init").local_init is False
    assert {load(f"ablation_convit_small_in1k_locality_{a}").locality_strength for a in ("0p5", "2p0")} == {0.5, 2.0}
    assert load("convit_small_in1k_10pct").sampling_ratio == 0.1
    assert load("deit_small_in1k_10pct").local_up_to_layer == 0


def test_every_config_file_loads():
    for path in CONFIGS.glob("*.yaml"):
        values = load_yaml(path)
        assert set(values) <= {f.name for f in dataclasses.fields(Config)}, path
