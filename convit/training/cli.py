"""The command line of ``train.py`` (and the flags other entry points share), built from the schema.

Every key is a flag with one line of help, its default and its allowed values, in its group; ``resolve`` reads
defaults, then the recipe (with its bases), then the flags, and checks every value.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..timm_models import model_name_problem
from .checks import validate
from .recipes import DIGITS_RECIPE, IMAGENET_RECIPE, find_config, list_configs, load_recipe, merge
from .schema import FIELDS, GROUPS, HINTS, MODEL_FLAGS, Config, help_line
from .values import (
    ConfigError,
    check_model_kwargs,
    coerce,
    fit_model_kwargs,
    parse_scalar,
    unknown_key_message,
    unused_drop_rates,
)


def metavar(name: str) -> str:
    """What a flag's value looks like: N, X, LOW,HIGH, K=V,..., {a,b} or TEXT."""
    f, hint = FIELDS[name], str(HINTS[name])
    if f.metadata["choices"]:
        return "{" + ",".join(map(str, f.metadata["choices"])) + "}"
    if "bool" in hint:
        return "BOOL"
    if "tuple" in hint:
        return "LOW,HIGH"
    if "list" in hint:
        return "N,N,..."
    if "dict" in hint:
        return "K=V,..."
    if "int" in hint:
        return "N"
    if "float" in hint:
        return "X"
    return "PATH" if "path" in name or name in ("output_dir", "resume", "finetune", "pretrained_file") else "TEXT"


def add_keys(parser: argparse.ArgumentParser, names, defaults: dict | None = None) -> None:
    """Flags ``--key-name`` for the schema keys ``names``, grouped, each with its help, default and choices.

    A flag left out is absent from the parsed namespace (the recipe's value or ``defaults`` apply).
    """
    groups = {}
    for name in names:
        group = FIELDS[name].metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        help_text = help_line(name)
        if defaults and name in defaults:
            help_text = help_text.rsplit("; default:", 1)[0] + f"; default: {defaults[name]}"
        # nargs="?" lets a boolean be given as a bare flag: --model-ema
        groups[group].add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            nargs="?",
            const="true",
            metavar=metavar(name),
            help=help_text,
        )


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """train.py's parser: --config, --list-configs, every key of the schema and the model flags."""
    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [--config RECIPE] [--list-configs] [--KEY-NAME VALUE ...] (every key and its values below)",
        description="Train a ConViT (or any timm model: --model resnet18). Every key of a recipe is also a flag; the defaults shown are the built-in ones, which the "
        "recipe (--config) changes where it says so. "
        "A boolean flag alone means true (--model-ema); --model-ema false turns it off.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="RECIPE",
        help=f"recipe: a YAML file or a shipped name ({', '.join(list_configs())}); default: {DIGITS_RECIPE}, "
        f"or {IMAGENET_RECIPE} with --data-path",
    )
    parser.add_argument("--list-configs", action="store_true", help="print the shipped recipes and exit")
    ordered = sorted(FIELDS, key=lambda n: GROUPS.index(FIELDS[n].metadata["group"]))
    add_keys(parser, ordered)
    model = parser.add_argument_group(
        "model arguments (they go into model_kwargs and survive --model; a timm model takes those its class has)"
    )
    for name, text in MODEL_FLAGS.items():
        model.add_argument(
            "--" + name.replace("_", "-"),
            dest="model_arg_" + name,
            default=argparse.SUPPRESS,
            nargs="?",
            const="true",
            metavar="V",
            help=f"{text} (model argument {name})",
        )
    return parser


@dataclass
class Resolved:
    """The config and what the user should be told about how it was resolved."""

    config: Config
    recipe: str
    notes: list[str]
    overrides: dict


def resolve(argv: list[str] | None = None, prog: str = "train.py") -> Resolved:
    """Defaults, then the recipe (with its bases), then the command line; every value checked."""
    parser = build_parser(prog)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("--")), unknown[0])
        if flag.startswith("--"):
            valid = set(FIELDS) | set(MODEL_FLAGS) | {"config"}
            raise ConfigError(unknown_key_message(flag[2:].split("=")[0].replace("-", "_"), valid))
        raise ConfigError(f"unexpected argument {flag!r}; flags look like --key value")
    cli = {k: v for k, v in vars(args).items() if k not in ("config", "list_configs")}
    model_args = {k.removeprefix("model_arg_"): parse_scalar(v) for k, v in cli.items() if k.startswith("model_arg_")}
    cli = {k: coerce(k, v) for k, v in cli.items() if not k.startswith("model_arg_")}
    recipe = args.config or (IMAGENET_RECIPE if cli.get("data_path") else DIGITS_RECIPE)
    values = load_recipe(recipe)
    notes = []
    if "model" in cli and cli["model"] != values.get("model") and values.get("model_kwargs"):
        dropped = ", ".join(f"{k}={v}" for k, v in values["model_kwargs"].items())
        notes.append(
            f"--model {cli['model']} replaces the recipe's {values.get('model')}: "
            f"its model_kwargs ({dropped}) are dropped"
        )
    values = merge(values, cli)
    model = str(values.get("model", FIELDS["model"].default))
    problem = model_name_problem(model)
    if problem:
        raise ConfigError(problem)
    explicit = check_model_kwargs(cli.get("model_kwargs", {}), "--model-kwargs", model)
    merged = values.get("model_kwargs", {})
    # the recipe's: those another timm model does not take are left out, and said so
    kept, left_out = fit_model_kwargs(model, {k: v for k, v in merged.items() if k not in explicit})
    values["model_kwargs"] = {k: v for k, v in merged.items() if k in explicit or k in kept}
    notes += left_out
    if model_args:
        values["model_kwargs"] = {**values["model_kwargs"], **check_model_kwargs(model_args, "command line", model)}
    cfg = validate(Config(**values))
    notes += unused_drop_rates(cfg)
    overrides = {**{k: v for k, v in cli.items() if k != "model_kwargs"}, **model_args}
    return Resolved(cfg, str(find_config(recipe).resolve()), notes, overrides)


def parse_args(argv: list[str] | None = None) -> Config:
    """The resolved Config of a command line (see ``resolve``)."""
    return resolve(argv).config
