"""Run llama-cpp-python's own server (`python -m llama_cpp.server`) for benchmarks.

Identical to the real thing except one setting: llama.cpp's "extra buffer types" (weight
repacking / AMX kernels) are turned off, as InferFlux and llama-server (`-nr`) also run
here, because on this CPU family they crash the process on the first multi-token batch.
"""

import runpy

import llama_cpp.llama_cpp as native

_default_model_params = native.llama_model_default_params


def _model_params_without_extra_buffers():  # noqa: ANN202
    params = _default_model_params()
    params.use_extra_bufts = False
    return params


native.llama_model_default_params = _model_params_without_extra_buffers
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
