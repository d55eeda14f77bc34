"""What runs in an executor's Python worker: the training task and the inference kernels.

worker: a training task (rows in, summary out). row_source, model_data: its rows in bounded
memory, as Keras takes them. local_steps: a window of compiled steps. model_cache: the one
cache of built models. hosted: worker 0's parameter server for in-cluster runs.
learning_rate: the driver's rate, followed. inference: prediction and evaluation kernels.
daemon: Spark's Python daemon with Keras imported. Nothing here imports the driver's
trainers, inputs, ml or cli.
"""
