"""Stand-in utils/extra_config.py (comfyfleet tests): ComfyUI's extra_model_paths.yaml
loader, with the standard library in PyYAML's place. It reads the subset these files
use: whole-line comments, top-level sections, "key: value" pairs indented under
them, values plain or double-quoted, and "key: |" blocks of one path per line. As in ComfyUI, base_path
(made absolute from the file's directory) prefixes every path, is_default puts the
paths first, and each other key is a model folder type (legacy names mapped)."""
import logging
import os

import folder_paths


def parse(text):
    """{section: {key: value}} of the YAML subset above."""
    config = {}
    section = None
    block = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if block is not None and indent > block[1]:
            config[section][block[0]] += line.strip() + "\n"
            continue
        block = None
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if indent == 0:
            section = key
            config[section] = {}
        elif value == "|":
            config[section][key] = ""
            block = (key, indent)
        else:
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            config[section][key] = {"true": True, "false": False}.get(value, value)
    return config


def load_extra_path_config(yaml_path):
    with open(yaml_path, "r", encoding="utf-8") as stream:
        config = parse(stream.read())
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path))
    for conf in config.values():
        base_path = conf.pop("base_path", None)
        if base_path:
            base_path = os.path.expandvars(os.path.expanduser(base_path))
            if not os.path.isabs(base_path):
                base_path = os.path.abspath(os.path.join(yaml_dir, base_path))
        is_default = conf.pop("is_default", False)
        for folder_name, paths in conf.items():
            for path in str(paths).split("\n"):
                if not path:
                    continue
                full_path = os.path.join(base_path, path) if base_path else os.path.abspath(os.path.join(yaml_dir, path))
                normalized = os.path.normpath(full_path)
                logging.info("Adding extra search path {} {}".format(folder_name, normalized))
                folder_paths.add_model_folder_path(folder_name, normalized, is_default)
