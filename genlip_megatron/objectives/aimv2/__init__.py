"""The AIMv2 objective (spec.py); registered in objectives/registry.py."""

from genlip_megatron.objectives.aimv2.spec import AIMv2Spec

SPEC = AIMv2Spec()
