from pathlib import Path

import pytest

from convit.training.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    budget,
    find_config,
    from_dict,
    list_configs,
    load_recipe,
    parse_args,
    resolve,
    to_dict,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
VARIANTS = ["convit_tiny", "convit_tiny_plus", "convit_small", "convit_small_plus", "convit_base", "convit_base_plus"]


def test_configs_folder_is_the_shipped_one():
    assert CONFIGS.resolve() == CONFIG_DIR and "in1k" in list_configs() and "digits" in list_configs()


def test_digits_recipe_is_the_default():
    assert parse_args(["--config", str(CONFIGS / "digits.yaml")]) == parse_args([])
    cfg = parse_args([])
    assert cfg.data == "digits" and cfg.model == "convit_tiny" and cfg.img_size == 16
    assert cfg.model_kwargs == dict(patch_size=4, in_chans=1, embed_dim=96, num_heads=4, depth=6, local_up_to_layer=4)


def test_data_path_without_config_is_the_papers_imagenet_recipe():
    cfg = parse_args(["--model", "convit_base", "--data-path", "/data/imagenet"])
    assert cfg.model == "convit_base" and cfg.model_kwargs == {} and cfg.img_size == 224
    assert (cfg.opt, cfg.lr, cfg.epochs, cfg.warmup_epochs, cfg.mixup, cfg.cutmix) == ("adamw", 5e-4, 300, 5, 0.8, 1.0)
    assert cfg == parse_args(["--config", "in1k", "--model", "convit_base", "--data-path", "/data/imagenet"])


def test_another_model_drops_the_recipes_model_kwargs_and_says_so():
    resolved = resolve(["--model", "convit_base"])
    assert resolved.config.model_kwargs == {}
    assert any("dropped" in note and "embed_dim=96" in note for note in resolved.notes)
    # a constructor argument given on the command line always applies
    cfg = parse_args(["--model", "convit_base", "--depth", "2", "--local-up-to-layer", "1"])
    assert cfg.model_kwargs == {"depth": 2, "local_up_to_layer": 1}
    assert parse_args(["--embed-dim", "48"]).model_kwargs["embed_dim"] == 48  # same model: merged


def test_recipes_compose(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nlr: 0.1\nmodel_kwargs: {depth: 3}\n")
    (tmp_path / "b.yaml").write_text(f"base: {CONFIGS / 'digits.yaml'}\nepochs: 7\n")
    values = load_recipe(tmp_path / "a.yaml")
    assert values["lr"] == 0.1 and values["epochs"] == 7 and values["img_size"] == 16
    assert values["model_kwargs"]["depth"] == 3 and values["model_kwargs"]["embed_dim"] == 96
    (tmp_path / "c.yaml").write_text("base: b.yaml\nmodel: convit_small\n")  # another model: kwargs dropped
    assert "model_kwargs" not in load_recipe(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.yaml": "base: nope.yaml\n"}, "base recipe .*nope.yaml' not found"),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, r"cycle \(a.yaml -> b.yaml -> a.yaml\)"),
        (
            {"a.yaml": "model_kwargs: {embed_dims: 3}\n"},
            "unknown model argument 'embed_dims'; did you mean 'embed_dim'",
        ),
        ({"a.yaml": "epochs: yes\n"}, "config key 'epochs'.*not a boolean"),
        ({"a.yaml": "lr: [1\n"}, "is not valid YAML"),
        ({"a.yaml": "- 1\n- 2\n"}, "must be a mapping"),
        ({"a.yaml": "warmup_epoch: 1\n"}, "unknown config key 'warmup_epoch'; did you mean 'warmup_epochs'"),
    ],
)
def test_bad_recipes_are_one_line(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_recipe(tmp_path / "a.yaml")
    assert "\n" not in str(err.value)


def test_binary_recipe(tmp_path):
    (tmp_path / "a.yaml").write_bytes(b"\xff\xfe\x00\x01garbage\x00")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_recipe(tmp_path / "a.yaml")


def test_command_line_overrides_the_recipe():
    cfg = parse_args(
        [
            "--config",
            "convit_small_in1k",
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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "x"], "config key 'epochs'"),
        (["--data", "imagefolder"], "needs --data-path"),
        (["--sampling-ratio", "0"], "sampling_ratio must lie in"),
        (["--config", "no/such.yaml"], "not found"),
        (["--config", "nosuch"], "shipped recipes: .*in1k"),
        (["--mixup", "0.8", "--batch-size", "3"], "even --batch-size"),
        (["--lr", "-1"], "lr must lie in"),
        (["--lr", "nan"], "lr must lie in"),
        (["--opt", "nonsense"], "unknown optimizer 'nonsense'"),
        (["--sched", "nonsense"], "sched must be one of"),
        (["--num-workers", "-1"], "num_workers must lie in"),
        (["--drop-path", "2"], "drop_path must lie in"),
        (["--smoothing", "1.5"], "smoothing must lie in"),
        (["--stop-after", "-1"], "stop_after must lie in"),
        (["--model-ema-decay", "5"], "model_ema_decay must lie in"),
        (["--batch-size", "-1"], "batch_size must lie in"),
        (["--resume", "/no/such/last.pth"], "--resume '/no/such/last.pth' not found"),
        (["--resume", "auto", "--overwrite"], "pass one of them"),
        (["--patch-sise", "4"], "did you mean 'patch_size'"),
    ],
)
def test_bad_values_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_args(argv)
    assert "\n" not in str(err.value)


def test_dict_round_trip():
    cfg = parse_args(["--scale", "0.2,0.9", "--data-path", "/d"])
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_recipe_for_every_variant(variant):
    cfg = Config(**load_recipe(f"{variant}_in1k"))
    assert cfg.model == variant and cfg.data == "imagefolder" and cfg.img_size == 224 and cfg.model_kwargs == {}
    assert (cfg.opt, cfg.lr, cfg.lr_base_batch, cfg.weight_decay) == ("adamw", 5e-4, 512, 0.05)
    assert (cfg.sched, cfg.warmup_epochs, cfg.epochs) == ("cosine", 5, 300)
    assert cfg.aa == "rand-m9-mstd0.5-inc1"
    assert (cfg.mixup, cfg.cutmix, cfg.smoothing, cfg.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert cfg.repeated_aug and cfg.drop_path == 0.1 and cfg.sampling_ratio == 1.0 and cfg.model_ema


def test_ablation_and_data_efficiency_recipes():
    def load(name):
        return Config(**load_recipe(name))

    assert load("ablation_deit_small_in1k").model_kwargs == {"local_up_to_layer": 0}
    assert load("ablation_convit_small_in1k_no_local_init").model_kwargs == {"local_init": False}
    assert {
        load(f"ablation_convit_small_in1k_locality_{a}").model_kwargs["locality_strength"] for a in ("0p5", "2p0")
    } == {
        0.5,
        2.0,
    }
    ten = load("convit_small_in1k_10pct")
    assert ten.sampling_ratio == 0.1 and ten.hold_images_seen and ten.model == "convit_small"
    assert budget(ten) == (3000, 50)  # the paper's protocol: the same images seen as 300 epochs at full data
    assert load("deit_small_in1k_10pct").model_kwargs == {"local_up_to_layer": 0}
    assert budget(load("convit_small_in1k")) == (300, 5)


def test_every_recipe_resolves():
    for name in list_configs():
        assert find_config(name).is_file()
        args = ["--config", name] + (["--data-path", "/d"] if name != "digits" else [])
        assert parse_args(args).model.startswith("convit_")
