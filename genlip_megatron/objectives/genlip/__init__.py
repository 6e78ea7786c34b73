"""The GenLIP objective (spec.py); registered in objectives/registry.py."""

from genlip_megatron.objectives.genlip.spec import GenLIPSpec

SPEC = GenLIPSpec()
