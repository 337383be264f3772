"""The run configuration: one YAML schema for the whole tool.

- `schema`: the sections as frozen dataclasses, each field with its validator
  and its line of documentation;
- `checks`: the validators;
- `loader`: YAML files and command-line overrides, merged and validated;
- `dump`: writing a config back as YAML, and the commented schema.

Example:

>>> config = load_config("configs/demo.yaml", {"shrink.epochs": 3})
>>> config.shrink.epochs
3
>>> print(dump_yaml(config, comments=True))
"""

from morphcli.config.dump import describe_schema, differences, dump_yaml, record, to_dict
from morphcli.config.loader import (
    COMMAND_LINE,
    default_config,
    demo_config_path,
    load_config,
    parse_override,
    parse_quantity,
    parse_target,
)
from morphcli.config.schema import (
    Config,
    DataConfig,
    DistributeConfig,
    ExpandConfig,
    HardwareSpec,
    ModelConfig,
    RegularizerConfig,
    RetrainConfig,
    RunConfig,
    ShrinkConfig,
    TargetConfig,
    TrainConfig,
    config_keys,
)
from morphcli.core.quantities import TARGET_METRICS as METRICS
from morphcli.core.quantities import Quantity, format_quantity

__all__ = [
    "COMMAND_LINE", "METRICS", "Config", "DataConfig", "DistributeConfig", "ExpandConfig",
    "HardwareSpec", "ModelConfig", "Quantity", "RegularizerConfig", "RetrainConfig", "RunConfig",
    "ShrinkConfig", "TargetConfig", "TrainConfig", "config_keys", "default_config",
    "demo_config_path", "describe_schema", "differences", "dump_yaml", "format_quantity", "load_config",
    "parse_override", "parse_quantity", "parse_target", "record", "to_dict",
]
