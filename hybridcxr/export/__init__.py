"""Exported models and the runtimes that run them: :mod:`.onnx` writes and checks ONNX files, :mod:`.record` keeps
what each export wrote (and refuses a stale one), :mod:`.runtime` runs them in onnxruntime (``--runtime onnx``)."""
