"""Triton python-backend model: ONNX Runtime on the ``model.onnx`` beside this file.

Runs inside Triton's python-backend stub (not radflow's runtime), so it imports only numpy,
onnxruntime and ``triton_python_backend_utils``. Tensor names, shapes and dtypes come from
the model config (``configs/cpu.pbtxt``); ``parameters.intra_op_num_threads`` caps ONNX Runtime's threads.
DEMO model trained on synthetic data, not for clinical use.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        params = config.get("parameters", {})
        threads = int(params.get("intra_op_num_threads", {}).get("string_value", "0") or 0)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                feeds = {
                    name: np.ascontiguousarray(pb_utils.get_input_tensor_by_name(request, name).as_numpy(), np.float32)
                    for name in self.inputs
                }
                results = self.session.run(self.outputs, feeds)
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in zip(self.outputs, results)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # answer this request with an error, keep serving the others
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {exc}")))
        return responses

    def finalize(self):
        self.session = None
