"""`jukebox-lite recipe --config C [key=value ...]`: the resolved recipe, as the stages will read it.

Prints YAML with `extends` merged and the overrides applied, then the values that follow from
earlier sections (not written in recipes) as comments. A bad key or value fails here, before any
stage runs; the Makefile checks ARGS with it.
"""

from __future__ import annotations

import argparse

import yaml

from jukebox_lite.core.config import DERIVED, recipe_tree
from jukebox_lite.stages.common import add_recipe_arguments, load_recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, reads=None)


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args)
    print(yaml.safe_dump(recipe_tree(recipe), sort_keys=False), end="")
    print("# derived (set from the sections they follow):")
    for key, source in DERIVED.items():
        section, name = key.split(".")
        print(f"#   {key}: {getattr(getattr(recipe, section), name)}  ({source})")
    return 0
