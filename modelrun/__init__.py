"""modelrun: deploy a trained Keras/TensorFlow model as a gRPC endpoint, log its predictions, watch drift.

Nothing heavy is imported here: the CLI and the control plane must start without TensorFlow.
"""

__version__ = "0.1.0"
