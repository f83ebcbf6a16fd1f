"""The model server: one process serves one TensorFlow/Keras model over the Open Inference Protocol (gRPC).

Run it with `python -m serving --model URI --name NAME [--port N] [--host H]`; see serving/settings.py
for every setting and its environment variable. TensorFlow is imported only by serving/model.py.
"""
