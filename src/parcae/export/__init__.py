"""Export to portable runtimes.

- `parcae.export.onnx`: a model as one ONNX graph (prefill and decoding), KV cache explicit,
  loop unrolled at a fixed depth (`parcae export onnx`).
- `parcae.export.runtime`: greedy / sampled generation from such a file with onnxruntime
  (`parcae generate --backend onnxruntime`).
- `parcae.export.commands`: the `parcae export` command.
"""
