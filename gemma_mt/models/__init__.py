"""Models: names → Gemma architectures (``registry``), where weights come from (``sources``),
and the foreign layouts they are read from and written to (``hf``, ``gguf``)."""

from gemma_mt.models.registry import (DEMO_TOKENIZER, FAMILIES, INIT_COMPILER_OPTIONS, MODELS,
                                      REMAT_POLICIES, Architecture, ModelSpec, abstract_params,
                                      count_params, get_model_spec, init_params,
                                      specs_of_architecture)

__all__ = ['DEMO_TOKENIZER', 'FAMILIES', 'INIT_COMPILER_OPTIONS', 'MODELS', 'REMAT_POLICIES',
           'Architecture', 'ModelSpec', 'abstract_params', 'count_params', 'get_model_spec',
           'init_params', 'specs_of_architecture']
