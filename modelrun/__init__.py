"""modelrun: deploy a trained Keras/TensorFlow model as a gRPC endpoint, log its predictions, watch drift.

    import modelrun
    client = modelrun.Client()

Nothing heavy is imported here: the CLI and the control plane must start without TensorFlow, so
`Client` is loaded on first use.
"""

__version__ = "0.1.0"
__all__ = ["Client"]


def __getattr__(name: str):
    if name == "Client":
        from modelrun.client import Client

        return Client
    raise AttributeError(f"module 'modelrun' has no attribute {name!r}")
