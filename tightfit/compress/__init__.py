"""Compression: apply a ``VariantSpec`` chain of registered methods to a model and save the variant directory.

    build_variant("minilm", VariantSpec.parse("prune_structured:heads=0.5,ffn=0.5|distill|int8_dynamic"),
                  "out/student", data=load_dataset("rotten_tomatoes"))

One file per method family (``cast``, ``quantize``, ``prune``, ``distill``, ``runtime``; ``lowbit/`` is the
4-bit family as a package), one table of methods (``registry``), the chain runner (``build``) and the
variant directory format (``variant``).
"""

from tightfit.compress.build import apply_chain, build_variant, default_variant_set, load_base
from tightfit.compress.registry import (
    ApplyContext,
    MethodInfo,
    all_methods,
    get_method,
    register_method,
    validate_chain,
)
from tightfit.compress.training import quick_finetune
from tightfit.compress.variant import (
    MANIFEST,
    Variant,
    load_variant,
    read_manifest,
    save_variant,
    verify_variant,
)

__all__ = [
    "MANIFEST",
    "ApplyContext",
    "MethodInfo",
    "Variant",
    "all_methods",
    "apply_chain",
    "build_variant",
    "default_variant_set",
    "get_method",
    "load_base",
    "load_variant",
    "quick_finetune",
    "read_manifest",
    "register_method",
    "save_variant",
    "validate_chain",
    "verify_variant",
]
